"""shoelib.captions: the one template behind 02's captions, 04's test prompts and 06's prompts."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from shoelib import captions, dataset, pipeline, run
from shoelib import generate as G
from shoelib.captions import DEFAULT_TEMPLATE, CaptionTemplateError, check_template, fill
from shoelib.paths import CONFIGS_DIR

ROW = {"baseColour": "Navy Blue", "articleType": "Casual Shoes", "season": "Summer",
       "gender": "Men", "brand": "Puma", "year": 2012.0, "usage": "Casual",
       "productDisplayName": "Puma Men Navy Blue Shoes"}


def test_one_template_gives_caption_and_prompts_in_the_same_words():
    caption = dataset.render_caption(DEFAULT_TEMPLATE, ROW)
    assert caption == ("A professional product photo of navy blue casual shoes, Summer "
                       "collection, Men, Puma, centered on white background, high quality, "
                       "product photography")
    plan = G.PromptPlanConfig(n_images=1, seed=0, colours=(("Navy Blue", 1.0),),
                              seasons=(("Summer", 1.0),), views=("side view",),
                              article="Casual Shoes")
    prompt = G.make_plan(plan)[0].prompt
    # The prompt is the caption with the view phrase where the brand was.
    assert prompt == caption.replace("Puma", "side view")
    test_prompt = pipeline.inference_prompts(1)[0]
    assert test_prompt == ("A professional product photo of black casual shoes, Summer "
                           "collection, Men, side view, centered on white background, high "
                           "quality, product photography")


def test_04_prompts_follow_the_template_and_category_given():
    prompts = pipeline.inference_prompts(7, "{colour} {article}, {view}", "Sports Shoes")
    assert prompts[0] == "black sports shoes, side view"
    assert prompts[6] == prompts[0]  # cycles through TEST_SUBJECTS
    assert len(set(prompts[:6])) == 6


def test_clauses_without_a_value_are_dropped():
    assert fill("{colour} {article}, {season} collection, {brand}",
                {"colour": None, "article": "Sports Shoes", "season": "NA", "brand": pd.NA}) \
        == "sports shoes"
    assert fill("{colour}  {article}", {"colour": " Navy  Blue", "article": "X"}) == "navy blue x"


@pytest.mark.parametrize("value", [None, float("nan"), pd.NA, "", " NA ", "n/a", "None", "<NA>"])
def test_missing_values(value):
    assert captions.is_missing(value)


def test_a_value_is_not_missing():
    assert not any(captions.is_missing(v) for v in ("Black", 0, 0.0, "Nan Shoes"))


def test_template_errors_name_the_parameter_and_the_valid_placeholders():
    with pytest.raises(CaptionTemplateError) as err:
        check_template("photo of {color} shoes")
    message = str(err.value)
    assert message.startswith("caption_template has unknown placeholder {color}")
    assert "{colour}" in message and "{brand}" in message and "{view}" in message
    for bad in ("{}", "{colour!r}", "{colour:>5}", "a { b", 42):
        with pytest.raises(CaptionTemplateError, match="caption_template"):
            check_template(bad)
    with pytest.raises(CaptionTemplateError, match=r"caption_template has no \{colour\}"):
        check_template("{article}", required=("colour",))
    assert check_template("{{literal}} {colour}") == ("colour",)


def test_every_notebook_and_profile_uses_the_one_default_template():
    declared = {s.name: run.declared_parameters(s) for s in run.discover_notebooks()}
    users = {name for name, params in declared.items() if "caption_template" in params}
    assert users == {"02_prepare_dataset", "04_inference_test", "06_generate"}
    assert {declared[name]["caption_template"] for name in users} == {DEFAULT_TEMPLATE}
    for profile in CONFIGS_DIR.glob("*.yaml"):
        assert yaml.safe_load(profile.read_text())["caption_template"] == DEFAULT_TEMPLATE
