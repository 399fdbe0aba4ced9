"""Every command and workflow entry point x every kind of bad input, as a user runs
them: a separate process in a folder of small real inputs, then the exit status,
the one-line error, and what the run changed in that folder.

Each row of CASES is one command line (run as ``unetpipe -q ...`` in a fresh copy
of the inputs of tests/bad_inputs.py, or as ``python ...`` where it starts so)
and what it must give:

- a refused run exits 1 with exactly one line on stderr, ``unetpipe COMMAND:
  error: ...`` holding every expected fragment, no traceback, and changes
  nothing at all in the folder (no output, no ``.NAME.partial`` /
  ``.NAME.tmp-*`` / ``.NAME.lock`` left, the user's files as they were);
- an accepted run exits 0 and changes only its output (``changes``), whose lock
  file is gone afterwards.
"""

import contextlib
import hashlib
import os
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from bad_inputs import (
    USER_FILE,
    changes,
    crafted_journal,
    leftovers,
    listing,
    make_inputs,
    outside,
    results_folder,
    run,
    tmpfs,
    write_stale_lock,
)
from tiny_workflow import TINY, snakemake

from unetpipe.io.images import store_kind, write_tiff
from unetpipe.io.outputs import lock_path, output_lock


@dataclass(frozen=True)
class Case:
    """One row: ``command`` (a shell-like line) and what it must give."""

    id: str
    command: str
    expect: str | tuple = ()  # fragment(s) of the one error line (or of stderr on success)
    code: int = 1
    out: str | None = None  # the output that must be left as it was, or written
    setup: Callable | None = None  # setup(folder): more (bad) input, before the listing
    context: Callable | None = None  # context(folder): held while the command runs
    changes: tuple = ()  # patterns of paths an accepted run may change (default: out)
    check: Callable | None = None  # check(folder, proc): more assertions
    marks: tuple = ()

    @property
    def param(self):
        return pytest.param(self, id=self.id, marks=self.marks)


# --- 1. an existing output that is not unetpipe's ------------------------------------

# command -> its line with the output as {out}
WRITERS = {
    "synth": "synth --dir {out} --n-train 1 --n-val 0 --train-shape 32 32 "
             "--predict-shape 32 32",
    "preprocess": "preprocess img.tif {out}",
    "targets": "targets x.ome.zarr {out}",
    "train": "train {out} --train-images x.ome.zarr --train-targets t.zarr --iterations 1 "
             "--depth 1 --features 2 --patch 32 32 --batch-size 2",
    "predict": "predict ck.pt x.ome.zarr {out}",
    "segment": "segment p.ome.zarr {out}",
    "segment-table": "segment p.ome.zarr new.ome.zarr --table {out}",
    "evaluate": "evaluate l.ome.zarr x.ome.zarr {out}",
    "summarize": "summarize {out} m.json",
    "export": "export ck.pt {out} --no-validate",
    "report-overlay": "report overlay x.ome.zarr l.ome.zarr {out}",
    "report-weightmap": "report weightmap t.zarr x.ome.zarr {out}",
    "report-metrics": "report metrics summary.csv {out}",
    "report-config": "report config {out}",
}
# model and demo folders are written into, never replaced: a user's folder there keeps
# its files, and only the command's own files are added
INTO = ("synth", "train")

UNRELATED = [
    Case(f"unrelated-{what}-{name}", line.format(out=out),
         (f"{out}: exists and is a {what} that is not a", "--overwrite"), out=out)
    for name, line in WRITERS.items()
    for out, what in (("keep", "folder"), ("mine.txt", "file"))
    if not (name in INTO and what == "folder")
]


def _written_beside_the_users_file(folder, proc):
    assert (folder / "keep" / USER_FILE).read_text() == "my notes, not unetpipe's\n"
    added = {p.relative_to(folder / "keep").as_posix() for p in (folder / "keep").rglob("*")
             if p.is_file()} - {USER_FILE}
    assert added, "nothing was written"
    assert all(a.endswith(".tif") or a in ("checkpoint_best.pt", "checkpoint_last.pt",
                                           "history.csv", "training_curves.png")
               for a in added), added


INTO_USER_FOLDER = [
    Case(f"into-user-folder-{name}", WRITERS[name].format(out="keep"), code=0, out="keep",
         check=_written_beside_the_users_file)
    for name in INTO
]


def _replaced_by_probabilities(folder, proc):
    assert store_kind(folder / "keep") == "probabilities"
    assert not (folder / "keep" / USER_FILE).exists()


def _replaced_by_summary(folder, proc):
    assert (folder / "mine.txt").read_text().startswith("sample,")


OVERWRITE = [
    Case("overwrite-folder-predict", "predict ck.pt x.ome.zarr keep --overwrite",
         "keep: replacing it (--overwrite)", code=0, out="keep",
         check=_replaced_by_probabilities),
    Case("overwrite-file-summarize", "summarize mine.txt m.json --overwrite",
         "mine.txt: replacing it (--overwrite)", code=0, out="mine.txt",
         check=_replaced_by_summary),
]

# --- 2. the output is, is inside, or holds an input: refused even with --overwrite --------

IS_INPUT = "an output may not replace what the command reads"
OUTPUT_IS_INPUT = [
    Case("is-input-preprocess", "preprocess x.ome.zarr x.ome.zarr",
         ("x.ome.zarr: is the input x.ome.zarr", IS_INPUT)),
    Case("is-input-preprocess-overwrite", "preprocess x.ome.zarr x.ome.zarr --overwrite",
         ("x.ome.zarr: is the input x.ome.zarr", IS_INPUT)),
    Case("is-input-predict", "predict ck.pt x.ome.zarr x.ome.zarr --overwrite",
         "x.ome.zarr: is the input x.ome.zarr"),
    Case("is-input-predict-checkpoint", "predict ck.pt x.ome.zarr ck.pt --overwrite",
         "ck.pt: is the input ck.pt"),
    Case("is-input-segment", "segment p.ome.zarr p.ome.zarr --overwrite",
         "p.ome.zarr: is the input p.ome.zarr"),
    Case("is-input-segment-table", "segment p.ome.zarr new.ome.zarr --table p.ome.zarr "
         "--overwrite", "p.ome.zarr: is the input p.ome.zarr"),
    Case("is-input-evaluate", "evaluate pred.tif truth.tif pred.tif --overwrite",
         "pred.tif: is the input pred.tif"),
    Case("is-input-summarize", "summarize m.json m.json --overwrite",
         "m.json: is the input m.json"),
    Case("inside-input-evaluate", "evaluate l.ome.zarr x.ome.zarr x.ome.zarr/m.json "
         "--overwrite", "x.ome.zarr/m.json: is inside the input x.ome.zarr"),
    Case("inside-input-new-folder-evaluate", "evaluate l.ome.zarr x.ome.zarr "
         "x.ome.zarr/sub/m.json", "x.ome.zarr/sub/m.json: is inside the input x.ome.zarr"),
    Case("inside-input-targets", "targets x.ome.zarr x.ome.zarr/t.zarr --overwrite",
         "x.ome.zarr/t.zarr: is inside the input x.ome.zarr"),
    Case("inside-output-segment-table", "segment p.ome.zarr new.ome.zarr --table "
         "new.ome.zarr/t.csv", "new.ome.zarr/t.csv: is inside the input new.ome.zarr"),
    Case("holds-input-targets", "targets x.ome.zarr ../case --overwrite",
         "../case: holds the input x.ome.zarr"),
    Case("holds-input-train-dot", "train . --train-images x.ome.zarr --train-targets t.zarr "
         "--overwrite", ".: holds the input x.ome.zarr"),
    Case("holds-working-directory", "report config . --overwrite",
         ".: holds the working directory"),
]

# --- 3./4. labels and images that are not what they claim ----------------------------

NEG, NAN = "labels contain negative values", "labels contain non-integer values (NaN"
HALF, COMPLEX = "labels contain non-integer values (such as 0.5)", "holds complex values"
BAD_VALUES = [
    Case("evaluate-pred-negative", "evaluate neg.tif truth.tif o.json", f"neg.tif: {NEG}"),
    Case("evaluate-truth-negative", "evaluate l.ome.zarr neg.tif o.json", f"neg.tif: {NEG}"),
    Case("evaluate-pred-nan", "evaluate nan.tif truth.tif o.json", f"nan.tif: {NAN}"),
    Case("evaluate-truth-nan", "evaluate l.ome.zarr nan.tif o.json", f"nan.tif: {NAN}"),
    Case("evaluate-pred-half", "evaluate half.tif truth.tif o.json", f"half.tif: {HALF}"),
    Case("evaluate-truth-half", "evaluate pred.tif half.tif o.json", f"half.tif: {HALF}"),
    Case("evaluate-pred-complex", "evaluate complex.tif truth.tif o.json",
         f"complex.tif: {COMPLEX} (complex64)"),
    Case("evaluate-truth-complex", "evaluate l.ome.zarr complex.tif o.json",
         f"complex.tif: {COMPLEX} (complex64)"),
    Case("evaluate-pred-shape", "evaluate shape.tif truth.tif o.json",
         ("shape.tif: predicted labels of shape (48, 64)", "truth.tif of shape (64, 64)")),
    Case("evaluate-truth-shape", "evaluate l.ome.zarr shape.tif o.json",
         ("predicted labels of shape (64, 64)", "shape.tif of shape (48, 64)")),
    Case("preprocess-complex", "preprocess complex.tif c.ome.zarr",
         f"complex.tif: {COMPLEX} (complex64)"),
    Case("preprocess-labels-negative", "preprocess img.tif c.ome.zarr --labels neg.tif",
         f"neg.tif: {NEG}"),
    # a valid config the network cannot train with: BatchNorm over one value per channel
    Case("train-batch-of-one", "train model --train-images x.ome.zarr --train-targets t.zarr "
         "--iterations 1 --patch 16 16 --batch-size 1",
         ("config key 'train.batch_size'", "too few for batch normalisation"), out="model"),
    Case("preprocess-no-space", "preprocess huge.zarr h.ome.zarr",
         ("h.ome.zarr: writing the preprocessed huge.zarr", "needs at least", "free")),
]

# --- 5./6. probabilities that are not probabilities; an image of another shape -------

NOT_PROBS = "holds values that are not probabilities"
PROBABILITIES = [
    # 128 x 128 in 16 blocks, the bad value at (120, 120): the partial store is begun first
    Case("segment-probabilities-nan", "segment pnan.ome.zarr s.ome.zarr --block 32 32 "
         "--threads 1", f"pnan.ome.zarr: {NOT_PROBS}", out="s.ome.zarr"),
    Case("segment-probabilities-negative", "segment pneg.ome.zarr s.ome.zarr --block 32 32 "
         "--threads 1", f"pneg.ome.zarr: {NOT_PROBS}", out="s.ome.zarr"),
    Case("segment-probabilities-above-one", "segment pbig.ome.zarr s.ome.zarr --block 32 32 "
         "--threads 1 --table s.csv", f"pbig.ome.zarr: {NOT_PROBS}", out="s.ome.zarr"),
    Case("segment-probabilities-uint8", "segment pu8.ome.zarr s.ome.zarr",
         "pu8.ome.zarr: holds uint8 values; expected class probabilities", out="s.ome.zarr"),
    Case("segment-image-shape", "segment p.ome.zarr s.ome.zarr --table s.csv --image "
         "shape.tif", "shape.tif: has spatial shape (48, 64), but the probabilities "
         "p.ome.zarr have (64, 64)", out="s.ome.zarr"),
]

# --- 7. checkpoints that are not checkpoints -------------------------------------------

CHECKPOINTS = [
    Case(f"{cmd}-checkpoint-{kind}", line.format(ck=ck),
         f"{ck}: not a readable PyTorch checkpoint")
    for cmd, line in (("info", "info {ck}"), ("predict", "predict {ck} x.ome.zarr q.ome.zarr"),
                      ("export", "export {ck} q.zip --no-validate"))
    for kind, ck in (("random-bytes", "rnd.pt"), ("text", "txt.pt"))
]

# --- 8./9. one writer per output; a full disk --------------------------------------------


def hold_lock(out):
    """Hold the output's lock in this process while the command runs."""
    return lambda folder: output_lock(folder / out)


def stale_lock(out):
    return lambda folder: write_stale_lock(folder, out)


BUSY = "is being written by process"
WRITERS_AT_ONCE = [
    Case("locked-predict", "predict ck.pt x.ome.zarr q.ome.zarr", f"q.ome.zarr: {BUSY}",
         out="q.ome.zarr", context=hold_lock("q.ome.zarr")),
    Case("locked-evaluate", "evaluate l.ome.zarr x.ome.zarr o.json", f"o.json: {BUSY}",
         out="o.json", context=hold_lock("o.json")),
    # the labels' lock is taken, the table's is not: neither is written
    Case("locked-segment-table", "segment p.ome.zarr s.ome.zarr --table s.csv",
         f"s.csv: {BUSY}", out="s.ome.zarr", context=hold_lock("s.csv")),
    Case("stale-lock-predict", "predict ck.pt x.ome.zarr q.ome.zarr", code=0,
         out="q.ome.zarr", setup=stale_lock("q.ome.zarr"), changes=(".q.ome.zarr.lock",)),
    Case("stale-lock-summarize", "summarize o.csv m.json", code=0, out="o.csv",
         setup=stale_lock("o.csv"), changes=(".o.csv.lock",)),
]


def _noise(folder):
    import numpy as np

    data = np.random.default_rng(0).integers(0, 2**16, (512, 512)).astype(np.uint16)
    write_tiff(folder / "noise.tif", data, axes="yx", compression=None)


@contextlib.contextmanager
def _small_disk(folder):
    with tmpfs(folder / "full", "300k") as problem:
        if problem:
            pytest.skip(problem)
        yield


DISK = [
    Case("disk-full-preprocess", "preprocess noise.tif full/n.ome.zarr",
         ("full/n.ome.zarr: the disk is full", "the partial output was removed"),
         out="full/n.ome.zarr", setup=_noise, context=_small_disk),
]

# --- 10. a crafted review journal (security) ---------------------------------------------

OPEN_REVIEW = ("python -c 'from unetpipe.review.store import LabelStore; "
               "print(LabelStore.open(\"results\", \"s\").recovered)'")


def _escaping_journal(folder):
    """Entries that lead out of the results folder: one removes ../victim.txt, one
    replaces ../victim2.txt with a staged file."""
    results_folder(folder)
    (folder / "victim.txt").write_text("keep me\n")
    (folder / "victim2.txt").write_text("keep me too\n")
    evil = b"pwned\n"
    journal = crafted_journal(folder, [
        {"path": "../victim.txt", "new": False, "old": True},
        {"path": "labels/s.ome.zarr/../../../victim2.txt", "new": True, "old": True,
         "sha256": hashlib.sha256(evil).hexdigest()},
    ], {"victim2.txt": evil})
    # journal/new/labels/s.ome.zarr/../../../victim2.txt is journal/victim2.txt
    (journal / "new" / "labels" / "s.ome.zarr").mkdir(parents=True)


def _linked_journal(folder):
    """A plain-looking entry under a link in the store that points out of it."""
    results_folder(folder)
    (folder / "outside").mkdir()
    (folder / "outside" / "victim3.txt").write_text("keep me\n")
    os.symlink("../../../outside", folder / "results/labels/s.ome.zarr/evil")
    crafted_journal(folder, [
        {"path": "labels/s.ome.zarr/evil/victim3.txt", "new": True, "old": True},
    ], {"new/labels/s.ome.zarr/evil/victim3.txt": b"pwned\n"})


def _set_aside(folder, proc):
    labels = folder / "results" / "labels"
    assert proc.stdout.strip() == "set aside", proc.stdout + proc.stderr
    assert not (labels / ".s.ome.zarr.journal").exists()
    assert [p.name for p in labels.glob(".s.ome.zarr.journal.bad-*")], sorted(os.listdir(labels))


JOURNAL_CHANGES = ("results/labels/.s.ome.zarr.journal*", "results/labels/.s.lock")
JOURNALS = [
    Case("review-journal-escapes", OPEN_REVIEW, "cannot be trusted", code=0,
         setup=_escaping_journal, changes=JOURNAL_CHANGES, check=_set_aside),
    Case("review-journal-through-link", OPEN_REVIEW, "cannot be trusted", code=0,
         setup=_linked_journal, changes=JOURNAL_CHANGES, check=_set_aside),
]

CASES = [*UNRELATED, *INTO_USER_FOLDER, *OVERWRITE, *OUTPUT_IS_INPUT, *BAD_VALUES, *PROBABILITIES, *CHECKPOINTS,
         *WRITERS_AT_ONCE, *DISK, *JOURNALS]


# --- the test --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("inputs"))


def _expect(case):
    return (case.expect,) if isinstance(case.expect, str) else tuple(case.expect)


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", [c.param for c in CASES])
def test_bad_input(case, inputs, tmp_path):
    folder = tmp_path / "case"
    shutil.copytree(inputs, folder, symlinks=True)
    if case.setup:
        case.setup(folder)
    args = shlex.split(case.command)
    context = case.context(folder) if case.context else contextlib.nullcontext()
    with context:
        before = listing(folder)
        proc = run(args, folder)
        after = listing(folder)
        changed = changes(before, after)
        assert proc.returncode == case.code, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout
        if case.code:
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            assert len(lines) == 1, proc.stderr
            assert lines[0].startswith(f"unetpipe {args[0]}: error: "), lines[0]
            for fragment in _expect(case):
                assert fragment in lines[0], lines[0]
            # nothing at all changed: no output, no partial, the inputs as they were
            assert changed == [], changed
            if case.out:
                assert not [n for n in leftovers(folder, case.out) if not n.endswith(".lock")]
        else:
            allowed = (*case.changes, *([case.out] if case.out else []))
            assert outside(changed, allowed) == [], changed
            for fragment in _expect(case):
                assert fragment in proc.stderr, proc.stderr
            if case.out:
                assert os.path.lexists(folder / case.out)
                assert leftovers(folder, case.out) == []
        if case.check:
            case.check(folder, proc)
    if case.out:  # (a lock this test held is released now)
        assert not os.path.lexists(folder / lock_path(case.out))


# --- 11. the workflow ---------------------------------------------------------------------


def _workflow_data(folder, image, labels):
    (folder / "data" / "images").mkdir(parents=True)
    (folder / "data" / "labels").mkdir(parents=True)
    shutil.copy2(image, folder / "data" / "images" / "bad.tif")
    shutil.copy2(labels, folder / "data" / "labels" / "bad.tif")


WORKFLOW_CONFIG = {
    **TINY,
    "data": {"train": {"images": "data/images/*.tif", "labels": "data/labels/*.tif"},
             "val": {"images": None, "labels": None},
             "predict": {"images": "data/images/*.tif", "labels": None},
             "curated": None},
}


@pytest.mark.workflow
@pytest.mark.slow
@pytest.mark.parametrize(("image", "labels", "expect"), [
    pytest.param("complex.tif", "truth.tif",
                 "data/images/bad.tif: holds complex values (complex64)", id="complex-image"),
    pytest.param("img.tif", "neg.tif",
                 "data/labels/bad.tif: labels contain negative values", id="negative-labels"),
])
def test_workflow_bad_input(inputs, tmp_path, image, labels, expect):
    folder = tmp_path / "run"
    _workflow_data(folder, inputs / image, inputs / labels)
    data = listing(folder / "data")
    proc = snakemake(folder, "--cores", "2", config=WORKFLOW_CONFIG, timeout=300)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    log = folder / "results" / "logs" / "preprocess" / "bad.log"
    assert log.is_file(), proc.stderr
    # (progress bars end in carriage returns: lines as a terminal shows them)
    last = [line for line in log.read_text().splitlines() if line.strip()][-1]
    assert f"unetpipe preprocess: error: {expect}" in last, last
    assert "Traceback" not in log.read_text()
    assert f"unetpipe preprocess: error: {expect}" in proc.stderr
    # the job's output is not there, nor anything it began; the data are untouched
    out = folder / "results" / "preprocessed" / "bad.ome.zarr"
    assert not out.exists()
    assert leftovers(folder, out.relative_to(folder)) == []
    assert listing(folder / "data") == data
