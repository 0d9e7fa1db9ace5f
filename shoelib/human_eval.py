"""Human evaluation: a seeded, blinded rating set, a rating widget, and honest statistics.

    rating_set = open_rating_set(output_root, "Casual Shoes", ["v1"], n_items=60, seed=42)
    session = RatingSession(rating_set, "alice")   # resumes from evaluation/human/alice.jsonl
    display(RatingWidget(session).box)             # JupyterLab only
    summary = summarise(rating_set, read_ratings(rating_set).ratings)

Files under <output_root>/evaluation/human/:

    key.json          per item: its source (real | run name), image file, sha256, full text
    rating_set.json   what a rater sees, in order: an opaque id and the text shown
    <rater>.jsonl     one line per answer or undo, appended as they happen
    ratings.csv       every final answer joined with the key (export)
    summary.json      the statistics of `summarise`

Blindness: item ids are random and the order is shuffled; every image is shown re-encoded
at the same size without its metadata (a generated PNG carries its prompt and seed); the text
shown is built from the attributes both sources share (colour, article, gender, season),
because the wording of a real caption (it names the brand) or of a prompt (it names a view)
would give the source away; each source contributes the same number of images of each colour.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shoelib.io import append_line, read_json, write_json, write_text
from shoelib.metrics import MetricResult
from shoelib.paths import PathNameError, RunPaths, path_name

REAL = "real"
REALISM = ("real", "generated")
USABILITY = (1, 2, 3, 4, 5)
QUESTIONS = ("realism", "match", "usability")
KEY_FILE = "key.json"
SET_FILE = "rating_set.json"
EXPORT_FILE = "ratings.csv"
SUMMARY_FILE = "summary.json"
CONFIDENCE = 0.95
NO_RATINGS = "no human ratings yet: rate the images in 08_human_eval (JupyterLab)"


class HumanEvalError(ValueError):
    """A user mistake: bad parameter, a rating set that no longer fits its run."""


def human_dir(output_root: str | Path) -> Path:
    return RunPaths.from_param(output_root).evaluation / "human"


def check_rater(rater: Any) -> str:
    """The rater name, which names the file <rater>.jsonl; a bad one is an error."""
    if not isinstance(rater, str) or not rater.strip():
        raise HumanEvalError("rater is empty: set rater = \"your-name\" in the parameters cell "
                             "(letters, digits, '.', '_' or '-')")
    try:
        return path_name("rater", rater)
    except PathNameError as err:
        raise HumanEvalError(str(err)) from None


# --- the rating set


@dataclass(frozen=True)
class RatingSet:
    """A drawn rating set.

    Attributes:
        folder: evaluation/human/.
        root: output_root; key paths are relative to it.
        settings: what it was drawn with (category, runs, n_items, seed, colours).
        items: in rating order, each {"item_id", "text"}: all a rater is shown besides the image.
        key: item_id -> {"source", "image", "sha256", "colour", "full_text"}; never shown.
        notes: remarks about the draw (fewer images than asked, partial runs, ...).
    """

    folder: Path
    root: Path
    settings: dict
    items: tuple[dict, ...]
    key: dict[str, dict]
    notes: tuple[str, ...] = ()

    @property
    def sources(self) -> list[str]:
        return [REAL, *self.settings["runs"]]

    @property
    def ids(self) -> list[str]:
        return [item["item_id"] for item in self.items]

    def image_path(self, item_id: str) -> Path:
        return self.root / self.key[item_id]["image"]


def shown_text(row: Mapping[str, Any], category: str) -> str:
    """'Black casual shoes, Men, Summer': the attributes every source has, in one wording."""
    def value(name: str) -> str | None:
        v = row.get(name)
        return None if v is None or (isinstance(v, float) and np.isnan(v)) or not str(v).strip() else str(v)

    parts = [" ".join(p for p in (value("colour"), category.lower()) if p)]
    parts += [v for v in (value("gender"), value("season")) if v]
    return ", ".join(parts)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_draw(runs: Sequence[str], n_items: Any, colours: Sequence[str]) -> list[str]:
    runs = [r for r in runs if r]
    if not runs:
        raise HumanEvalError("run_name is empty: name the synthetic run of 06 to rate")
    for param, run in zip(("run_name", "compare_run"), runs, strict=False):
        path_name(param, run)  # one folder name under synthetic/, never a path
    if len(set(runs)) != len(runs):
        raise HumanEvalError(f"compare_run {runs[-1]!r} is run_name itself; name another run or "
                             "set compare_run = \"\"")
    if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < len(runs) + 1:
        raise HumanEvalError(f"n_items={n_items!r} must be a whole number of at least "
                             f"{len(runs) + 1} (one image per source)")
    if isinstance(colours, str):
        raise HumanEvalError(f"rating_colours={colours!r} must be a list, e.g. [\"Black\", \"White\"]")
    return runs


def draw_rating_set(output_root: str | Path, category: str, runs: Sequence[str], n_items: int,
                    seed: int, colours: Sequence[str] = ()) -> RatingSet:
    """Draw a blinded set: real test photos of 02 and the images of each run of 06.

    Each source gets n_items // sources images with the same colour counts; colours are
    filled round-robin (in a seeded order), so the mix stays balanced when one colour runs out.

    Args:
        output_root: the run folder (processed/ and synthetic/ under it).
        category: the articleType 02 prepared (its test split is the real source).
        runs: one or two synthetic run names (side by side, e.g. base vs LoRA).
        n_items: images to rate in all.
        seed: the draw, the ids and the order.
        colours: colours to balance over; empty = every colour all sources have.
    Raises:
        HumanEvalError: bad parameter, unknown colour, no colour common to all sources.
        MissingInputError / EmptyRunError: 02 or 06 has not run.
    """
    from shoelib.dataset import read_split
    from shoelib.generate import read_run

    runs = _check_draw(runs, n_items, colours)
    paths = RunPaths.from_param(output_root)
    pools = {REAL: read_split(paths.processed(category) / "test")}
    notes: list[str] = []
    for run in runs:
        synthetic = read_run(paths.synthetic_run(run))
        pools[run] = synthetic.frame
        notes += [f"{run}: {note}" for note in synthetic.notes]
    common = sorted(set.intersection(*(set(p["colour"].dropna().astype(str)) for p in pools.values())))
    if colours:
        unknown = [c for c in colours if c not in common]
        if unknown:
            raise HumanEvalError(f"rating_colours {unknown} are not in every source; choose from "
                                 f"{common} or [] for all")
        common = list(colours)
    if not common:
        raise HumanEvalError(f"no colour is shared by every source ({', '.join(pools)}); the set "
                             "could not be balanced")
    sources = list(pools)
    per_source = n_items // len(sources)
    if n_items % len(sources):
        notes.append(f"n_items={n_items} is not a multiple of {len(sources)} sources: "
                     f"{per_source} per source")
    available = {c: min(int((p["colour"] == c).sum()) for p in pools.values()) for c in common}
    rng = np.random.default_rng(seed)
    order = [common[i] for i in rng.permutation(len(common))]
    quota = dict.fromkeys(common, 0)
    while sum(quota.values()) < per_source:
        grew = False
        for colour in order:
            if sum(quota.values()) < per_source and quota[colour] < available[colour]:
                quota[colour] += 1
                grew = True
        if not grew:
            break
    taken = sum(quota.values())
    if taken < per_source:
        notes.append(f"only {taken} images per source could be balanced (the sources share "
                     f"{taken} images of the colours {common}); {len(sources) * taken} in all")
    drawn = []
    for source, pool in pools.items():
        for colour in common:
            rows = pool[pool["colour"] == colour]
            for i in sorted(rng.choice(len(rows), size=quota[colour], replace=False)):
                drawn.append((source, rows.iloc[int(i)]))
    ids = [f"{x:08x}" for x in rng.choice(16 ** 8, size=len(drawn), replace=False)]
    key = {}
    for item_id, (source, row) in zip(ids, drawn, strict=True):
        image = Path(row["image_path"])
        key[item_id] = {
            "source": source, "image": _relative(image, paths.root),
            "sha256": file_sha256(image), "colour": str(row["colour"]),
            "full_text": str(row["text"]), "shown_text": shown_text(row, category),
        }
    items = tuple({"item_id": ids[i], "text": key[ids[i]]["shown_text"]}
                  for i in rng.permutation(len(ids)))
    settings = {"category": category, "runs": runs, "n_items": n_items, "seed": seed,
                "colours": list(colours)}
    return RatingSet(human_dir(output_root), paths.root, settings, items, key, tuple(notes))


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path.resolve())


def save_rating_set(rating_set: RatingSet) -> None:
    """The key first, then the set: a set file always has its key beside it."""
    write_json(rating_set.folder / KEY_FILE, {"items": rating_set.key})
    write_json(rating_set.folder / SET_FILE, {"settings": rating_set.settings,
                                              "items": list(rating_set.items),
                                              "notes": list(rating_set.notes)})


def load_rating_set(output_root: str | Path) -> RatingSet | None:
    """The set saved under evaluation/human/, or None if there is none."""
    folder = human_dir(output_root)
    set_path, key_path = folder / SET_FILE, folder / KEY_FILE
    if not set_path.is_file():
        return None
    try:
        saved, key = read_json(set_path), read_json(key_path)["items"]
        items = tuple(saved["items"])
        missing = [item["item_id"] for item in items if item["item_id"] not in key]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise HumanEvalError(f"{set_path} or {key_path.name} is unreadable ({err}); move "
                             f"{folder} aside to draw a new set") from None
    if missing:
        raise HumanEvalError(f"{key_path} lacks {len(missing)} item(s) of {set_path.name}, e.g. "
                             f"{missing[0]}; move {folder} aside to draw a new set")
    return RatingSet(folder, RunPaths.from_param(output_root).root, saved["settings"], items,
                     key, tuple(saved.get("notes", ())))


def open_rating_set(output_root: str | Path, category: str, runs: Sequence[str], n_items: int,
                    seed: int, colours: Sequence[str] = ()) -> RatingSet:
    """The saved set if it was drawn with these settings, else a newly drawn and saved one.

    Raises:
        HumanEvalError: ratings of a set drawn with other settings exist (they would be
            orphaned), or a parameter is bad.
    """
    runs = _check_draw(runs, n_items, colours)
    wanted = {"category": category, "runs": runs, "n_items": n_items, "seed": seed,
              "colours": list(colours)}
    saved = load_rating_set(output_root)
    if saved is not None and saved.settings == wanted:
        return saved
    if saved is not None:
        rated = sorted(p.name for p in saved.folder.glob("*.jsonl"))
        if rated:
            changed = {k: (saved.settings.get(k), v) for k, v in wanted.items()
                       if saved.settings.get(k) != v}
            raise HumanEvalError(
                f"{saved.folder} holds ratings ({', '.join(rated)}) of a set drawn with other "
                f"settings (saved, asked: {changed}); set the parameters back to rate it, or move "
                f"{saved.folder} aside to draw a new set")
    rating_set = draw_rating_set(output_root, category, runs, n_items, seed, colours)
    save_rating_set(rating_set)
    return rating_set


def changed_items(rating_set: RatingSet) -> list[str]:
    """Items whose image is gone or differs from when the set was drawn (by sha256)."""
    changed = []
    for item_id in rating_set.ids:
        path = rating_set.image_path(item_id)
        if not path.is_file():
            changed.append(f"{rating_set.key[item_id]['image']} is missing")
        elif file_sha256(path) != rating_set.key[item_id]["sha256"]:
            changed.append(f"{rating_set.key[item_id]['image']} has changed")
    return changed


def check_unchanged(rating_set: RatingSet) -> None:
    changed = changed_items(rating_set)
    if changed:
        raise HumanEvalError(
            f"{len(changed)} of {len(rating_set.items)} images of the rating set changed since it "
            f"was drawn ({changed[0]}): ratings would not describe the run as it is. Move "
            f"{rating_set.folder} aside (keep its ratings.csv) to draw a new set")


def composition(rating_set: RatingSet) -> pd.DataFrame:
    """Images per colour (rows) and source (columns): the balance of the set."""
    key = pd.DataFrame(rating_set.key.values())
    return pd.crosstab(key["colour"], key["source"]).reindex(columns=rating_set.sources, fill_value=0)


# --- ratings files


def rater_file(rating_set: RatingSet, rater: str) -> Path:
    return rating_set.folder / f"{check_rater(rater)}.jsonl"


def _check_answer(record: Any, known: set[str]) -> str | None:
    """Why a parsed line is not a usable answer or undo; None if it is."""
    if not isinstance(record, dict):
        return "not a JSON object"
    item_id = record.get("undo", record.get("item_id"))
    if item_id not in known:
        return f"unknown image id {item_id!r}"
    if "undo" in record:
        return None
    if record.get("realism") not in REALISM:
        return f"realism {record.get('realism')!r} is not one of {REALISM}"
    if not isinstance(record.get("match"), bool):
        return f"match {record.get('match')!r} is not true or false"
    usability = record.get("usability")
    if isinstance(usability, bool) or usability not in USABILITY:
        return f"usability {usability!r} is not one of 1-5"
    return None


def replay(path: Path, known: set[str]) -> tuple[dict[str, dict], list[str]]:
    """The answers a rater's file holds now (undos applied), in answer order, and its problems.

    A bad line (truncated, not JSON, unknown image id, bad value) is reported with its number
    and skipped; every good line is kept.
    """
    answers: dict[str, dict] = {}
    problems: list[str] = []
    if not path.is_file():
        return answers, problems
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            problems.append(f"{path.name} line {number}: not valid JSON (cut off?); skipped")
            continue
        why = _check_answer(record, known)
        if why:
            problems.append(f"{path.name} line {number}: {why}; skipped")
        elif "undo" in record:
            if answers.pop(record["undo"], None) is None:
                problems.append(f"{path.name} line {number}: undo of {record['undo']!r}, which "
                                "has no answer; ignored")
        else:
            answers.pop(record["item_id"], None)  # a new answer replaces an older one
            answers[record["item_id"]] = {k: record.get(k) for k in ("item_id", *QUESTIONS, "at")}
    return answers, problems


@dataclass(frozen=True)
class RatingsRead:
    """Every rater's current answers (one row per rater and image) and the skipped lines."""

    ratings: pd.DataFrame
    problems: tuple[str, ...]


def read_ratings(rating_set: RatingSet) -> RatingsRead:
    known = set(rating_set.ids)
    rows, problems = [], []
    for path in sorted(rating_set.folder.glob("*.jsonl")):
        answers, bad = replay(path, known)
        rows += [{"rater": path.stem, **a} for a in answers.values()]
        problems += bad
    columns = ["rater", "item_id", *QUESTIONS, "at"]
    return RatingsRead(pd.DataFrame(rows, columns=columns), tuple(problems))


class RatingSession:
    """One rater working through a set; every answer is on disk before the next image shows.

    Resumes where the rater's file stops. Refuses a set whose images changed since the draw.
    """

    def __init__(self, rating_set: RatingSet, rater: str):
        self.rater = check_rater(rater)
        check_unchanged(rating_set)
        self.rating_set = rating_set
        self.path = rater_file(rating_set, rater)
        self.answers, self.problems = replay(self.path, set(rating_set.ids))

    @property
    def total(self) -> int:
        return len(self.rating_set.items)

    @property
    def done(self) -> int:
        return len(self.answers)

    @property
    def current(self) -> dict | None:
        """The first image in set order without an answer, or None when all are rated."""
        for item in self.rating_set.items:
            if item["item_id"] not in self.answers:
                return item
        return None

    def _write(self, record: dict) -> dict:
        record = {**record, "rater": self.rater,
                  "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        append_line(self.path, json.dumps(record))
        return record

    def answer(self, realism: str, match: bool, usability: int) -> None:
        """Record the answer for the current image."""
        item = self.current
        if item is None:
            raise HumanEvalError(f"every image is rated already ({self.total} of {self.total})")
        record = {"item_id": item["item_id"], "realism": realism, "match": match,
                  "usability": usability}
        why = _check_answer(record, {item["item_id"]})
        if why:
            raise HumanEvalError(why)
        self.answers[item["item_id"]] = self._write(record)

    def undo(self) -> str | None:
        """Take back the last answer; that image is shown again. None if there is none."""
        if not self.answers:
            return None
        item_id = next(reversed(self.answers))
        self._write({"undo": item_id})
        del self.answers[item_id]
        return item_id


# --- the widget


def display_png(path: str | Path, side: int) -> bytes:
    """The image fitted into side x side px, as PNG bytes without any metadata."""
    from PIL import Image, ImageOps

    from shoelib.images import open_rgb

    image = ImageOps.contain(open_rgb(path), (side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


KEYS = {"r": ("realism", "real"), "g": ("realism", "generated"),
        "y": ("match", True), "n": ("match", False),
        **{str(i): ("usability", i) for i in USABILITY}}


class RatingWidget:
    """The rater's view: one image, its text, three questions, progress and undo.

    Keyboard: type into the `keys` box and press Enter. r / g: real photo or generated;
    y / n: matches the text or not; 1-5: usability; "gy4" + Enter answers all three and
    saves; u + Enter undoes the last answer. The buttons do the same with the mouse.
    Needs a live frontend (`browse.widget_frontend`); tests drive it programmatically.
    """

    def __init__(self, session: RatingSession, display_px: int = 384):
        import ipywidgets as W

        self.session = session
        self.display_px = display_px
        self.header = W.HTML(f"<b>rater: {session.rater}</b>")
        self.image = W.Image(format="png", width=display_px, height=display_px)
        self.text = W.HTML()
        style = {"description_width": "220px"}
        self.realism = W.ToggleButtons(options=[("Real photo (r)", "real"),
                                                ("Generated (g)", "generated")], value=None,
                                       description="Real photo or generated?", style=style)
        self.match = W.ToggleButtons(options=[("Yes (y)", True), ("No (n)", False)], value=None,
                                     description="Does it match the text?", style=style)
        self.usability = W.ToggleButtons(options=[(str(i), i) for i in USABILITY], value=None,
                                         description="Usable as catalogue photo? 1 no … 5 as is",
                                         style=style)
        self.keys = W.Text(value="", placeholder="r/g, y/n, 1-5 then Enter; u = undo",
                           description="keys", continuous_update=False)
        self.save = W.Button(description="Save and next", button_style="primary")
        self.undo = W.Button(description="Undo last answer")
        self.progress = W.IntProgress(min=0, max=session.total, description="progress")
        self.count = W.Label()
        self.status = W.HTML()
        self.save.on_click(lambda _: self.submit())
        self.undo.on_click(lambda _: self.take_back())
        self.keys.observe(self._on_keys, names="value")
        self.box = W.VBox([self.header, self.image, self.text, self.realism, self.match,
                           self.usability, W.HBox([self.keys, self.save, self.undo]),
                           W.HBox([self.progress, self.count]), self.status])
        self.box.add_class("shoelib-rating")
        if session.problems:
            self.status.value = "<br>".join(session.problems)
        self.show()

    def show(self) -> None:
        item = self.session.current
        self.progress.value = self.session.done
        self.count.value = f"{self.session.done} / {self.session.total} rated"
        for toggle in (self.realism, self.match, self.usability):
            toggle.value = None
        if item is None:
            self.image.value = b""
            self.text.value = "<b>All images are rated. Thank you.</b>"
            self.save.disabled = True
            return
        self.save.disabled = False
        self.image.value = display_png(self.session.rating_set.image_path(item["item_id"]),
                                       self.display_px)
        self.text.value = f"<p style='font-size:1.1em'>{item['text']}</p>"

    def submit(self) -> bool:
        """Save the three answers and move on; says what is missing instead if incomplete."""
        answers = {"realism": self.realism.value, "match": self.match.value,
                   "usability": self.usability.value}
        missing = [name for name, value in answers.items() if value is None]
        if missing:
            self.status.value = f"answer every question first (missing: {', '.join(missing)})"
            return False
        self.session.answer(**answers)
        self.status.value = ""
        self.show()
        return True

    def take_back(self) -> None:
        item_id = self.session.undo()
        self.status.value = "undone: the last answer" if item_id else "nothing to undo"
        self.show()

    def _on_keys(self, change: dict) -> None:
        typed = change["new"].strip().lower()
        if not typed:
            return
        toggles = {"realism": self.realism, "match": self.match, "usability": self.usability}
        unknown = [c for c in typed if c not in KEYS and c not in "u "]
        if unknown:
            self.status.value = f"unknown key {unknown[0]!r}: use r/g, y/n, 1-5 or u"
        elif "u" in typed:
            self.take_back()
        else:
            for char in typed.replace(" ", ""):
                question, value = KEYS[char]
                toggles[question].value = value
            if all(t.value is not None for t in toggles.values()):
                self.submit()
        self.keys.value = ""


# --- statistics


def binomial_ci(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Clopper-Pearson (exact) interval of the proportion k / n."""
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float | None, float | None]:
    """Mean with a Student-t interval (None bounds below two values or with no spread)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2 or x.std() == 0:
        return mean, None, None
    low, high = stats.t.interval(confidence, len(x) - 1, loc=mean, scale=stats.sem(x))
    return mean, float(low), float(high)


def cohen_kappa(a: Sequence[Any], b: Sequence[Any], weights: str | None = None) -> float | None:
    """Cohen's kappa of two raters (scikit-learn); None when undefined (no variation)."""
    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():  # the undefined case is reported as None instead
        warnings.simplefilter("ignore")
        value = cohen_kappa_score(list(a), list(b), weights=weights)
    return None if not np.isfinite(value) else float(value)


def fleiss_kappa(matrix: np.ndarray) -> float | None:
    """Fleiss' kappa (statsmodels) of an items x raters matrix of answers; None if undefined."""
    from statsmodels.stats.inter_rater import aggregate_raters
    from statsmodels.stats.inter_rater import fleiss_kappa as fleiss

    table, _ = aggregate_raters(np.asarray(matrix))
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        value = fleiss(table, method="fleiss")
    return None if not np.isfinite(value) else float(value)


@dataclass(frozen=True)
class Estimate:
    """One human-evaluation number with its interval and the ratings it rests on.

    n_real / n_synthetic count ratings (not images) of real and of generated images.
    """

    name: str
    source: str
    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    n_real: int | None = None
    n_synthetic: int | None = None
    note: str = ""
    better: str = ""

    def separates_from(self, other: Estimate) -> int:
        """+1 / -1 when this interval lies wholly above / below the other's, else 0."""
        if None in (self.ci_low, self.ci_high, other.ci_low, other.ci_high):
            return 0
        return 1 if self.ci_low > other.ci_high else -1 if self.ci_high < other.ci_low else 0

    def as_metric_result(self) -> MetricResult:
        ci = ("" if self.ci_low is None
              else f"95% CI {self.ci_low:.3f}-{self.ci_high:.3f}; ")
        return MetricResult(f"human: {self.name} ({self.source})", self.value, None,
                            self.n_real, self.n_synthetic, ci + self.note, self.better)


@dataclass(frozen=True)
class HumanSummary:
    estimates: tuple[Estimate, ...]
    lines: tuple[str, ...]
    n_ratings: int = 0
    raters: tuple[str, ...] = ()

    def metric_results(self) -> list[MetricResult]:
        return [e.as_metric_result() for e in self.estimates]

    def as_dict(self) -> dict:
        return {"n_ratings": self.n_ratings, "raters": list(self.raters),
                "estimates": [asdict(e) for e in self.estimates], "lines": list(self.lines)}


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def _proportion(name: str, source: str, hits: pd.Series, is_real: pd.Series, note: str = "",
                better: str = "") -> Estimate:
    k, n = int(hits.sum()), len(hits)
    low, high = binomial_ci(k, n)
    return Estimate(name, source, k / n, low, high, int(is_real.sum()), int((~is_real).sum()),
                    f"{k} of {n} ratings. {note}".strip(), better)


def _detection(frame: pd.DataFrame, run: str) -> tuple[Estimate, str]:
    pool = frame[frame["source"].isin([REAL, run])]
    is_real = pool["source"] == REAL
    right = (pool["realism"] == "generated") != is_real
    est = _proportion("tells generated from real", f"real vs {run}", right, is_real,
                      "50 % = indistinguishable", "lower")
    ci = f"{_pct(est.value)} (95 % CI {_pct(est.ci_low)}-{_pct(est.ci_high)}, {len(pool)} ratings)"
    if est.ci_low > 0.5:
        words = (f"Raters told {run} images from real photos better than chance: right in {ci}.")
    elif est.ci_high < 0.5:
        words = (f"Raters were right less often than chance on real vs {run}: {ci}; they took "
                 "one for the other systematically.")
    else:
        words = (f"Raters could not tell {run} images from real photos: right in {ci}; the "
                 "interval covers 50 %, which is what indistinguishable looks like at this N.")
    return est, words


def _agreement(frame: pd.DataFrame, raters: list[str]) -> tuple[list[Estimate], list[str]]:
    """Cohen's kappa for two raters, Fleiss' kappa for more, on the images all of them rated."""
    wide = {q: frame.pivot(index="item_id", columns="rater", values=q)[raters].dropna()
            for q in QUESTIONS}
    estimates, lines = [], []
    measure = "Cohen's kappa" if len(raters) == 2 else "Fleiss' kappa"
    for question, table in wide.items():
        if table.empty:
            lines.append(f"{measure} ({question}): no image rated by all {len(raters)} raters yet.")
            continue
        if len(raters) == 2:
            weights = "quadratic" if question == "usability" else None
            value = cohen_kappa(table.iloc[:, 0], table.iloc[:, 1], weights)
            how = " (quadratic weights: 4 vs 5 is a smaller disagreement than 1 vs 5)" if weights else ""
        else:
            value = fleiss_kappa(table.astype(str).to_numpy())
            how = " (answers as categories)" if question == "usability" else ""
        real = frame[frame["item_id"].isin(table.index) & (frame["source"] == REAL)]["item_id"].nunique()
        note = (f"{len(table)} images rated by all of {', '.join(raters)}{how}"
                + ("" if value is not None else "; undefined: every answer was the same"))
        estimates.append(Estimate(f"agreement, {measure}: {question}", "all", value,
                                  n_real=real, n_synthetic=len(table) - real, note=note,
                                  better="higher"))
    return estimates, lines


def summarise(rating_set: RatingSet, ratings: pd.DataFrame) -> HumanSummary:
    """Every statistic of the ratings, with intervals, and the same in plain words.

    Ratings are the unit: several raters' ratings of one image are not independent, so with
    several raters the intervals are somewhat too narrow.
    """
    if ratings.empty:
        return HumanSummary((), (NO_RATINGS,))
    frame = ratings.merge(pd.DataFrame([{"item_id": i, "source": k["source"]}
                                        for i, k in rating_set.key.items()]), on="item_id")
    raters = sorted(frame["rater"].unique())
    runs = list(rating_set.settings["runs"])
    estimates: list[Estimate] = []
    lines = [f"{len(frame)} ratings by {len(raters)} rater(s) ({', '.join(raters)}) of "
             f"{frame['item_id'].nunique()} of {len(rating_set.items)} images."]
    for run in runs:
        est, words = _detection(frame, run)
        estimates.append(est)
        lines.append(words)
    per_source: dict[str, dict[str, Estimate]] = {}
    for source in rating_set.sources:
        rows = frame[frame["source"] == source]
        if rows.empty:
            lines.append(f"{source}: no rating yet.")
            continue
        is_real = rows["source"] == REAL
        judged = _proportion("judged a real photo", source, rows["realism"] == "real", is_real,
                             better="" if source == REAL else "higher")
        match = _proportion("matches the text", source, rows["match"].astype(bool), is_real,
                            better="higher")
        mean, low, high = mean_ci(rows["usability"].astype(float).tolist())
        if low is not None:  # a t interval on few ratings can leave the scale
            low, high = max(low, USABILITY[0]), min(high, USABILITY[-1])
        usable = Estimate("usability (1-5)", source, mean, low, high, int(is_real.sum()),
                          int((~is_real).sum()), f"mean of {len(rows)} ratings", "higher")
        per_source[source] = {"judged real": judged, "match": match, "usability": usable}
        estimates += [judged, match, usable]
        lines.append(f"{source}: judged real in {_pct(judged.value)}, matches its text in "
                     f"{_pct(match.value)}, usability {mean:.2f} of 5 ({len(rows)} ratings).")
    if len(raters) >= 2:
        agreement, notes = _agreement(frame, raters)
        estimates += agreement
        lines += notes
        lines += [f"{e.name}: {'undefined' if e.value is None else f'{e.value:.2f}'} "
                  f"({e.note})." for e in agreement]
    if len(runs) == 2 and all(r in per_source for r in runs):
        a, b = runs
        for measure, label in (("judged real", "judged real"), ("match", "matches its text"),
                               ("usability", "usability")):
            side = per_source[a][measure].separates_from(per_source[b][measure])
            if side:
                high_run, low_run = (a, b) if side > 0 else (b, a)
                lines.append(f"{label}: {high_run} scores higher than {low_run} (the 95 % "
                             "intervals do not overlap).")
            else:
                lines.append(f"{label}: no difference between {a} and {b} shown (the 95 % "
                             "intervals overlap, or one is missing).")
    return HumanSummary(tuple(estimates), tuple(lines), len(frame), tuple(raters))


# --- export


def ratings_table(rating_set: RatingSet, ratings: pd.DataFrame) -> pd.DataFrame:
    """Every current answer joined with the key: source, image, colour, texts, correct."""
    key = pd.DataFrame([{"item_id": i, **k} for i, k in rating_set.key.items()])
    table = ratings.merge(key, on="item_id", how="left")
    table["correct"] = (table["realism"] == "generated") != (table["source"] == REAL)
    return table


def write_outputs(rating_set: RatingSet, ratings: pd.DataFrame, summary: HumanSummary) -> list[Path]:
    """ratings.csv (the export) and summary.json under evaluation/human/."""
    csv = write_text(rating_set.folder / EXPORT_FILE,
                     ratings_table(rating_set, ratings).to_csv(index=False))
    return [csv, write_json(rating_set.folder / SUMMARY_FILE,
                            {"settings": rating_set.settings, **summary.as_dict()})]


def existing_summary(output_root: str | Path) -> tuple[HumanSummary, tuple[str, ...]]:
    """The summary of whatever ratings exist under output_root (for 07), and read problems.

    Says "no human ratings yet" when there is no set or no rating; never draws a set. An
    unreadable set is reported as a problem rather than raised: 07 goes on without it.
    """
    try:
        rating_set = load_rating_set(output_root)
    except HumanEvalError as err:
        return HumanSummary((), (NO_RATINGS,)), (str(err),)
    if rating_set is None:
        return HumanSummary((), (NO_RATINGS,)), ()
    read = read_ratings(rating_set)
    changed = changed_items(rating_set)
    problems = read.problems + (
        (f"{len(changed)} images changed since the set was drawn ({changed[0]}): the ratings "
         "describe the images as they were",) if changed else ())
    return summarise(rating_set, read.ratings), problems
