"""shoelib.human_eval: the blinded rating set, the widget driven by hand, ratings files, statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from shoelib import generate as G
from shoelib import human_eval as H
from shoelib.paths import RunPaths

CATEGORY = "Casual Shoes"
COLOURS = ["Red", "Blue", "Green"]  # as the rating_root fixture draws them


@pytest.fixture()
def root(rating_root) -> Path:
    return rating_root


def one_run_set(root: Path, n_items: int = 12, seed: int = 7) -> H.RatingSet:
    return H.open_rating_set(root, CATEGORY, ["lora"], n_items=n_items, seed=seed)


# --- bad input


@pytest.mark.parametrize("name", ["", "   ", "a/b", "../x", ".hidden", "a b", "x" * 129, None])
def test_bad_rater_name_is_a_clear_error(name):
    with pytest.raises(H.HumanEvalError, match=r"^rater( is empty|=.* cannot name a folder)"):
        H.check_rater(name)
    assert H.check_rater("alice.b-2_c") == "alice.b-2_c"


def test_bad_draw_parameters_name_the_parameter(root):
    with pytest.raises(H.HumanEvalError, match="n_items=1 must be a whole number of at least 2"):
        one_run_set(root, n_items=1)
    with pytest.raises(ValueError, match=r"compare_run='\.\./x' cannot name a folder"):
        H.open_rating_set(root, CATEGORY, ["lora", "../x"], n_items=6, seed=0)
    with pytest.raises(H.HumanEvalError, match="compare_run 'lora' is run_name itself"):
        H.open_rating_set(root, CATEGORY, ["lora", "lora"], n_items=6, seed=0)
    with pytest.raises(H.HumanEvalError, match=r"rating_colours \['Pink'\] are not in every source"):
        H.open_rating_set(root, CATEGORY, ["lora"], n_items=6, seed=0, colours=["Pink"])


# --- the rating set


def test_set_is_balanced_blind_seeded_and_key_kept_apart(root):
    rs = H.open_rating_set(root, CATEGORY, ["lora", "base"], n_items=18, seed=3)
    counts = H.composition(rs)
    assert list(counts.columns) == ["real", "lora", "base"]
    assert (counts.sum() == 6).all()  # 18 images, 6 per source
    assert counts.nunique(axis=1).eq(1).all()  # each colour equally often in every source
    assert counts.max().max() - counts.min().min() <= 1  # and colours balanced against each other
    shown = json.loads((rs.folder / H.SET_FILE).read_text())["items"]
    assert all(set(item) == {"item_id", "text"} for item in shown)  # no source, no path
    assert all(len(i["item_id"]) == 8 and int(i["item_id"], 16) >= 0 for i in shown)
    texts = {rs.key[i["item_id"]]["source"]: i["text"] for i in shown if
             rs.key[i["item_id"]]["colour"] == "Red"}
    assert len(set(texts.values())) == 1  # one wording for every source: the text does not tell
    assert set(texts) == {"real", "lora", "base"}
    sources = [rs.key[i]["source"] for i in rs.ids]
    assert sources != sorted(sources, key=["real", "lora", "base"].index)  # shuffled
    again = H.draw_rating_set(root, CATEGORY, ["lora", "base"], n_items=18, seed=3)
    assert again.items == rs.items and again.key == rs.key
    other = H.draw_rating_set(root, CATEGORY, ["lora", "base"], n_items=18, seed=4)
    assert other.ids != rs.ids


def test_too_few_images_per_colour_is_said(root):
    rs = one_run_set(root, n_items=40)  # real has 4 per colour: 12 per source at most
    run = G.read_run(RunPaths(root).synthetic / "lora").frame["colour"].value_counts()
    shared = sum(min(4, int(run.get(c, 0))) for c in COLOURS)
    counts = H.composition(rs)
    assert shared < 20 and (counts.sum() == shared).all() and counts.nunique(axis=1).eq(1).all()
    assert any(f"only {shared} images per source could be balanced" in n for n in rs.notes)


def test_saved_set_is_reused_and_a_redraw_never_orphans_ratings(root):
    rs = one_run_set(root)
    assert H.load_rating_set(root).key == rs.key
    assert one_run_set(root).items == rs.items
    redrawn = one_run_set(root, seed=8)  # no rating yet: a new draw is fine
    assert redrawn.ids != rs.ids
    H.RatingSession(redrawn, "alice").answer("real", True, 3)
    with pytest.raises(H.HumanEvalError, match=r"holds ratings \(alice.jsonl\).*'seed': \(8, 9\)"):
        one_run_set(root, seed=9)


def test_changed_run_is_detected_before_anyone_rates(root):
    rs = one_run_set(root)
    victim = next(i for i in rs.ids if rs.key[i]["source"] == "lora")
    Image.new("RGB", (64, 64), (0, 0, 0)).save(rs.image_path(victim))
    with pytest.raises(H.HumanEvalError, match=r"1 of 12 images of the rating set changed .*"
                                               r"synthetic/lora/\d+\.png has changed"):
        H.RatingSession(rs, "alice")
    assert not (rs.folder / "alice.jsonl").exists()
    summary, problems = H.existing_summary(root)
    assert summary.lines == (H.NO_RATINGS,) and "1 images changed" in problems[0]


# --- the widget


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_widget_buttons_keys_undo_and_resume(root):
    rs = one_run_set(root)
    widget = H.RatingWidget(H.RatingSession(rs, "alice"), display_px=128)
    first = rs.ids[0]
    assert widget.progress.value == 0 and widget.count.value == "0 / 12 rated"
    with Image.open(__import__("io").BytesIO(widget.image.value)) as shown:
        assert shown.size == (128, 128) and not shown.info  # same size for all, no metadata
    assert widget.text.value.count(rs.items[0]["text"]) == 1

    widget.realism.value = "generated"
    widget.save.click()  # incomplete: nothing saved
    assert "missing: match, usability" in widget.status.value
    assert not widget.session.path.exists()
    widget.match.value, widget.usability.value = True, 4
    widget.save.click()
    assert lines(widget.session.path)[0] | {"at": None} == {
        "item_id": first, "realism": "generated", "match": True, "usability": 4,
        "rater": "alice", "at": None}
    assert widget.progress.value == 1 and widget.realism.value is None  # next image, blank

    widget.keys.value = "rn2"  # keyboard: three keys + Enter answer and save
    widget.keys.value = "g"
    widget.keys.value = "y5"  # answers may come in pieces
    assert widget.keys.value == "" and widget.session.done == 3
    widget.keys.value = "u"  # undo the last answer: its image comes back
    assert widget.session.current["item_id"] == rs.ids[2] and widget.progress.value == 2
    widget.keys.value = "x"
    assert "unknown key 'x'" in widget.status.value

    # close and resume: a new session reads the file and starts at the first unrated image
    resumed = H.RatingWidget(H.RatingSession(rs, "alice"), display_px=128)
    assert resumed.session.done == 2 and resumed.session.current["item_id"] == rs.ids[2]
    read = H.read_ratings(rs)
    assert read.problems == ()
    assert read.ratings[["item_id", "realism", "match", "usability"]].values.tolist() == [
        [rs.ids[0], "generated", True, 4], [rs.ids[1], "real", False, 2]]
    resumed.undo.click()
    resumed.undo.click()
    resumed.undo.click()
    assert resumed.status.value == "nothing to undo" and resumed.session.done == 0


def test_widget_finishes_and_several_raters_rate_the_same_set(root):
    rs = one_run_set(root, n_items=4)
    for rater in ("alice", "bob"):
        widget = H.RatingWidget(H.RatingSession(rs, rater), display_px=64)
        for _ in range(4):
            widget.keys.value = "ry3"
        assert widget.save.disabled and "All images are rated" in widget.text.value
        assert widget.progress.value == 4
    ratings = H.read_ratings(rs).ratings
    assert sorted(ratings["rater"].value_counts().items()) == [("alice", 4), ("bob", 4)]
    with pytest.raises(H.HumanEvalError, match="every image is rated already"):
        H.RatingSession(rs, "alice").answer("real", True, 3)


def test_bad_lines_are_reported_by_number_and_good_lines_kept(root):
    rs = one_run_set(root)
    session = H.RatingSession(rs, "carol")
    session.answer("real", True, 5)
    session.answer("generated", False, 1)
    path = session.path
    good = path.read_text()
    path.write_text(good
                    + json.dumps({"item_id": "deadbeef", "realism": "real", "match": True,
                                  "usability": 3}) + "\n"
                    + json.dumps({"item_id": rs.ids[2], "realism": "maybe", "match": True,
                                  "usability": 3}) + "\n"
                    + json.dumps({"item_id": rs.ids[3], "realism": "real", "match": True,
                                  "usability": True}) + "\n"
                    + '{"item_id": "' + rs.ids[4] + '", "realism": "re')  # cut off
    read = H.read_ratings(rs)
    assert read.problems == (
        "carol.jsonl line 3: unknown image id 'deadbeef'; skipped",
        "carol.jsonl line 4: realism 'maybe' is not one of ('real', 'generated'); skipped",
        "carol.jsonl line 5: usability True is not one of 1-5; skipped",
        "carol.jsonl line 6: not valid JSON (cut off?); skipped",
    )
    assert read.ratings["item_id"].tolist() == rs.ids[:2]
    resumed = H.RatingSession(rs, "carol")  # the next answer does not glue onto the cut line
    resumed.answer("real", True, 2)
    assert H.read_ratings(rs).ratings["item_id"].tolist() == rs.ids[:3]
    assert len(H.read_ratings(rs).problems) == 4


# --- statistics


def test_binomial_ci_is_clopper_pearson():
    low, high = H.binomial_ci(7, 10)  # published exact interval: 0.3475 - 0.9333
    assert low == pytest.approx(0.3475, abs=1e-4) and high == pytest.approx(0.9333, abs=1e-4)
    assert H.binomial_ci(10, 10) == pytest.approx((0.025 ** (1 / 10), 1.0))


def test_cohen_kappa_on_a_published_table():
    # 50 items, two raters: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> kappa 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert H.cohen_kappa(a, b) == pytest.approx(0.4)
    assert H.cohen_kappa(["x"] * 5, ["x"] * 5) is None  # undefined, not a crash


FLEISS_TABLE = np.array([  # 10 subjects, 14 raters, 5 categories; Fleiss' kappa = 0.210
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])


def test_fleiss_kappa_on_a_published_table():
    matrix = np.array([np.repeat(np.arange(1, 6), row) for row in FLEISS_TABLE])  # items x raters
    assert matrix.shape == (10, 14)
    assert H.fleiss_kappa(matrix) == pytest.approx(0.2099, abs=1e-4)


def simulated_ratings(rs: H.RatingSet, rater: str, rule) -> pd.DataFrame:
    rows = []
    for i, item_id in enumerate(rs.ids):
        realism, match, usability = rule(i, rs.key[item_id]["source"])
        rows.append({"rater": rater, "item_id": item_id, "realism": realism, "match": match,
                     "usability": usability, "at": None})
    return pd.DataFrame(rows)


def test_a_perfect_rater_scores_100_and_a_guesser_covers_50(root):
    rs = one_run_set(root, n_items=24)
    perfect = simulated_ratings(rs, "a", lambda i, s: ("real" if s == "real" else "generated", True, 5))
    summary = H.summarise(rs, perfect)
    detection = summary.estimates[0]
    assert (detection.name, detection.value, detection.n_real, detection.n_synthetic) == (
        "tells generated from real", 1.0, 12, 12)
    assert detection.ci_low == pytest.approx(0.025 ** (1 / 24)) and detection.ci_low > 0.5
    assert "better than chance" in summary.lines[1]

    covered = []
    for seed in range(200):  # guessers: the 95 % interval must cover 50 % for (at least) ~95 %
        coins = np.random.default_rng(seed).random(len(rs.ids)) < 0.5
        guesser = simulated_ratings(rs, "b", lambda i, s, c=coins: ("real" if c[i] else "generated", True, 3))
        detection = H.summarise(rs, guesser).estimates[0]
        covered.append(detection.ci_low < 0.5 < detection.ci_high)
        if covered[-1] and seed == 1:
            assert "could not tell lora images from real photos" in H.summarise(rs, guesser).lines[1]
    assert covered[1] and np.mean(covered) >= 0.95


def test_rates_per_source_and_the_table_rows_carry_n(root):
    rs = one_run_set(root, n_items=12)
    ratings = simulated_ratings(rs, "a", lambda i, s: ("real", s == "real", 4 if s == "real" else 2))
    summary = H.summarise(rs, ratings)
    by_key = {(e.name, e.source): e for e in summary.estimates}
    assert by_key["matches the text", "real"].value == 1.0
    assert by_key["matches the text", "lora"].value == 0.0
    assert by_key["usability (1-5)", "lora"].value == 2.0
    assert by_key["usability (1-5)", "lora"].ci_low is None  # no spread: no interval claimed
    lora = ratings[[rs.key[i]["source"] == "lora" for i in ratings["item_id"]]]
    few = H.summarise(rs, lora.head(3).assign(usability=[1, 5, 3])).estimates
    usable = next(e for e in few if e.name == "usability (1-5)")
    assert 1 <= usable.ci_low < usable.value < usable.ci_high <= 5  # kept on the scale
    row = by_key["judged a real photo", "lora"].as_metric_result()
    assert (row.name, row.value, row.n_real, row.n_synthetic) == (
        "human: judged a real photo (lora)", 1.0, 0, 6)
    assert row.note.startswith("95% CI 0.541-1.000; 6 of 6 ratings")


def test_agreement_uses_cohen_for_two_and_fleiss_for_more(root):
    rs = one_run_set(root, n_items=12)
    rules = [lambda i, s: ("real" if i % 2 else "generated", i % 3 == 0, 1 + i % 5),
             lambda i, s: ("real" if i % 2 else "generated", i % 4 == 0, 1 + i % 5),
             lambda i, s: ("real" if i % 3 else "generated", i % 3 == 0, 1 + (i + 1) % 5)]
    frames = [simulated_ratings(rs, name, rule) for name, rule in zip("abc", rules, strict=True)]
    two = H.summarise(rs, pd.concat(frames[:2]))
    kappa = {e.name: e.value for e in two.estimates if e.name.startswith("agreement")}
    assert kappa["agreement, Cohen's kappa: realism"] == pytest.approx(1.0)
    expected = H.cohen_kappa([i % 3 == 0 for i in range(12)], [i % 4 == 0 for i in range(12)])
    assert kappa["agreement, Cohen's kappa: match"] == pytest.approx(expected)
    three = H.summarise(rs, pd.concat(frames))
    fleiss = [e for e in three.estimates if e.name.startswith("agreement")]
    assert [e.name for e in fleiss] == [f"agreement, Fleiss' kappa: {q}" for q in H.QUESTIONS]
    realism = np.array([[r(i, "")[0] for r in rules] for i in range(12)])
    assert fleiss[0].value == pytest.approx(H.fleiss_kappa(realism))
    assert fleiss[0].n_real + fleiss[0].n_synthetic == 12


def test_side_by_side_verdict_only_when_intervals_separate(root):
    rs = H.open_rating_set(root, CATEGORY, ["lora", "base"], n_items=60, seed=1)
    clear = simulated_ratings(rs, "a", lambda i, s: (
        "generated" if s == "base" else "real", s != "base", (1 if s == "base" else 4) + i % 2))
    lines = H.summarise(rs, clear).lines
    assert "judged real: lora scores higher than base (the 95 % intervals do not overlap)." in lines
    assert "usability: lora scores higher than base (the 95 % intervals do not overlap)." in lines
    same = simulated_ratings(rs, "a", lambda i, s: ("real" if i % 2 else "generated", i % 3 > 0, 1 + i % 5))
    lines = H.summarise(rs, same).lines
    assert not any("scores higher" in line for line in lines)
    assert any(line.startswith("judged real: no difference between lora and base") for line in lines)


def test_export_joins_the_key_and_summary_without_ratings(root):
    assert H.existing_summary(root) == (H.HumanSummary((), (H.NO_RATINGS,)), ())
    rs = one_run_set(root, n_items=6)
    assert H.existing_summary(root)[0].lines == (H.NO_RATINGS,)
    session = H.RatingSession(rs, "alice")
    session.answer("generated", True, 4)
    session.answer("generated", False, 2)
    read = H.read_ratings(rs)
    summary = H.summarise(rs, read.ratings)
    csv, js = H.write_outputs(rs, read.ratings, summary)
    table = pd.read_csv(csv)
    assert len(table) == 2 and {"rater", "item_id", "source", "image", "colour", "full_text",
                                "shown_text", "correct"} <= set(table.columns)
    assert table["correct"].tolist() == [s != "real" for s in table["source"]]
    assert json.loads(js.read_text())["n_ratings"] == 2
    assert H.existing_summary(root)[0].n_ratings == 2


def test_unreadable_set_is_a_clear_error_and_07_goes_on(root):
    rs = one_run_set(root, n_items=6)
    (rs.folder / H.KEY_FILE).write_text("{")
    with pytest.raises(H.HumanEvalError, match=r"key.json is unreadable .*move .* aside"):
        H.load_rating_set(root)
    summary, problems = H.existing_summary(root)
    assert summary.lines == (H.NO_RATINGS,) and "unreadable" in problems[0]
