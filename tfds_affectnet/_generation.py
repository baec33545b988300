"""Per-row outcomes, skip logs and the plain / Apache Beam generation loops.

Every row of a release becomes one `Outcome`: an example, an exclusion (a row that is not a
label of the chosen config, e.g. expression 8-10 in ``emotions8``) or a skip (a bad file: corrupt,
truncated or missing image, unreadable annotation). The same row function serves both paths:

An example may carry notes (`Note`: e.g. its face box was clipped to the image, its landmarks
were unreadable): it is kept, and each note is counted and listed with the file's name.

* plain: `generate` loops over the rows, yields the examples one at a time, and at the end of the
  split writes ``skipped_<split>.tsv`` (one line per skipped file: name, reason, detail),
  ``notes_<split>.tsv`` (one line per note of a kept example: name, note, detail) and
  ``report_<split>.json`` (counts per reason and per note) next to the generated dataset and
  prints / logs the counts and the first names.
* Beam: `beam_generate` returns ``beam.Create(work items) | beam.FlatMap(rows) | beam.ParDo``; the
  skipped files and the notes go to the same two TSV files through ``beam.io.WriteToText`` and
  the counts to Beam counters, printed by `GenerationMixin._process_pipeline_result`.
"""

import collections
import concurrent.futures
import functools
import json
import os
import re
import traceback
from typing import Any, NamedTuple

from absl import logging
from etils import epath

__all__ = [
    "EXAMPLE",
    "EXCLUDED",
    "SKIPPED",
    "Note",
    "Outcome",
    "example",
    "excluded",
    "skipped",
    "SplitReport",
    "safe_process",
    "generation_threads",
    "generate",
    "beam_generate",
    "GenerationMixin",
    "final_data_dir",
]

EXAMPLE = "example"
EXCLUDED = "excluded"
SKIPPED = "skipped"
NOTED = "noted"
SKIP_LOG_HEADER = "file_name\treason\tdetail"
NOTES_LOG_HEADER = "file_name\tnote\tdetail"
_NAMES_SHOWN = 10
BEAM_NAMESPACE = "tfds_affectnet"
# Unexpected errors (not a known bad-file case) are skipped too, but a systematic failure stops
# the build: after this many, when they are more than this fraction of the rows seen.
MAX_UNEXPECTED_ERRORS = 100
MAX_UNEXPECTED_FRACTION = 0.1


class Note(NamedTuple):
    """Something to know about a kept example: ``reason`` is counted, ``detail`` is logged."""

    reason: str
    detail: str = ""


class Outcome(NamedTuple):
    """What became of one row: kind is EXAMPLE, EXCLUDED or SKIPPED.

    For an example, ``notes`` are its `Note` s (e.g. face box clipped to the image, landmarks
    unreadable and stored as NaN) and ``reason`` their reasons joined by "; ".
    """

    kind: str
    name: str
    key: str | None = None
    example: dict[str, Any] | None = None
    reason: str = ""
    detail: str = ""
    notes: tuple[Note, ...] = ()


def _as_notes(note):
    """ "" / a reason / a `Note` / a sequence of reasons and `Note` s -> a tuple of `Note` s."""
    if not note:
        return ()
    if isinstance(note, (str, Note)):
        note = (note,)
    notes = tuple(n if isinstance(n, Note) else Note(str(n)) for n in note if n)
    return tuple(Note(n.reason, _one_line(n.detail)) for n in notes)


def example(key, features, note=""):
    """An example outcome; ``note``: "", a reason, a `Note` or a sequence of them."""
    notes = _as_notes(note)
    return Outcome(EXAMPLE, key, key, features, "; ".join(n.reason for n in notes), notes=notes)


def excluded(name, reason):
    return Outcome(EXCLUDED, name, reason=reason)


def skipped(name, reason, detail=""):
    return Outcome(SKIPPED, name, reason=reason, detail=_one_line(detail))


def _one_line(text):
    return re.sub(r"\s+", " ", str(text)).strip()


def skip_log_line(outcome):
    return "\t".join(_one_line(part) for part in (outcome.name, outcome.reason, outcome.detail))


def _note_line(name, note):
    return "\t".join(_one_line(part) for part in (name, note.reason, note.detail))


def note_log_lines(outcome):
    """The ``notes_<split>.tsv`` lines of an example, one per note."""
    return [_note_line(outcome.name, note) for note in outcome.notes]


def _names_text(names):
    shown = ", ".join(names[:_NAMES_SHOWN])
    more = len(names) - _NAMES_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


def final_data_dir(path):
    """The dataset folder a temporary ``incomplete.<XXXXXX>_<version>`` folder is renamed to."""
    path = epath.Path(path)
    match = re.fullmatch(r"incomplete\.?[A-Z0-9]{6}_(.+)", path.name)
    return path.parent / match.group(1) if match else path


class SplitReport:
    """Counts outcomes per reason and writes the skip log of one split."""

    def __init__(self, dataset, split, log_dir):
        self.dataset = dataset
        self.split = split
        self.log_dir = epath.Path(log_dir)
        self.counts = {EXAMPLE: 0, EXCLUDED: collections.Counter(), SKIPPED: collections.Counter()}
        self.notes = collections.Counter()
        self.skipped = []
        self.noted = []  # (name, Note) of the kept examples
        self.rows = 0
        self.unexpected = 0

    @property
    def skip_log_path(self):
        return self.log_dir / f"skipped_{self.split}.tsv"

    @property
    def notes_log_path(self):
        return self.log_dir / f"notes_{self.split}.tsv"

    @property
    def report_path(self):
        return self.log_dir / f"report_{self.split}.json"

    def add(self, outcome):
        self.rows += 1
        if outcome.kind == EXAMPLE:
            self.counts[EXAMPLE] += 1
            for note in outcome.notes:
                self.notes[note.reason] += 1
                self.noted.append((outcome.name, note))
        else:
            self.counts[outcome.kind][outcome.reason] += 1
        if outcome.kind == SKIPPED:
            self.skipped.append(outcome)
            logging.warning(
                "%s/%s: skipped %s (%s) %s",
                self.dataset,
                self.split,
                outcome.name,
                outcome.reason,
                outcome.detail,
            )

    def add_extra(self, outcome):
        """Records a skipped file that never reached the row loop (e.g. an orphan annotation)."""
        self.counts[outcome.kind][outcome.reason] += 1
        if outcome.kind == SKIPPED:
            self.skipped.append(outcome)

    def as_dict(self):
        return {
            "dataset": self.dataset,
            "split": self.split,
            "rows": self.rows,
            "examples": self.counts[EXAMPLE],
            "excluded": dict(sorted(self.counts[EXCLUDED].items())),
            "skipped": dict(sorted(self.counts[SKIPPED].items())),
            "notes": dict(sorted(self.notes.items())),
            "skip_log": str(final_data_dir(self.log_dir) / self.skip_log_path.name),
            "notes_log": str(final_data_dir(self.log_dir) / self.notes_log_path.name),
        }

    def summary(self):
        def counts_text(counter):
            total = sum(counter.values())
            if not total:
                return "0"
            return f"{total} (" + ", ".join(f"{k}: {v}" for k, v in sorted(counter.items())) + ")"

        lines = [
            f"{self.dataset} split '{self.split}': {self.counts[EXAMPLE]} examples written from "
            f"{self.rows} rows.",
            f"  excluded (not a label of this config): {counts_text(self.counts[EXCLUDED])}",
            f"  skipped (bad or missing files): {counts_text(self.counts[SKIPPED])}",
        ]
        if self.notes:
            lines.append(f"  kept with a note: {counts_text(self.notes)}")
        if self.skipped:
            lines.append(f"  skipped files: {_names_text([o.name for o in self.skipped])}")
        if self.noted:
            names = list(dict.fromkeys(name for name, _ in self.noted))
            lines.append(f"  noted files: {_names_text(names)}")
        final = final_data_dir(self.log_dir)
        lines.append(f"  skip log: {final / self.skip_log_path.name}")
        if self.noted:
            lines.append(f"  notes log: {final / self.notes_log_path.name}")
        return "\n".join(lines)

    def write(self):
        """Writes the skip log, the notes log and the counts, and prints / logs the summary."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        lines = [SKIP_LOG_HEADER] + [skip_log_line(outcome) for outcome in self.skipped]
        self.skip_log_path.write_text("\n".join(lines) + "\n")
        lines = [NOTES_LOG_HEADER] + [_note_line(name, note) for name, note in self.noted]
        self.notes_log_path.write_text("\n".join(lines) + "\n")
        self.report_path.write_text(json.dumps(self.as_dict(), indent=2) + "\n")
        summary = self.summary()
        logging.info("%s", summary)
        print(summary, flush=True)


def _row_name(row):
    return row.get("file_name", "?") if isinstance(row, dict) else str(row)


def _run(process, row):
    """``(outcome, None)``, or ``(None, (error, traceback))`` when ``process`` raised."""
    try:
        return process(row), None
    except Exception as error:  # one bad row must not end a long build
        return None, (error, traceback.format_exc())


def _unexpected(row, failure, report=None):
    """Turns an unexpected exception into a skip; too many of them (with a report) re-raise."""
    error, trace = failure
    name = _row_name(row)
    logging.warning("Unexpected error on %s:\n%s", name, trace)
    if report is not None:
        report.unexpected += 1
        if (
            report.unexpected >= MAX_UNEXPECTED_ERRORS
            and report.unexpected > MAX_UNEXPECTED_FRACTION * (report.rows + 1)
        ):
            raise RuntimeError(
                f"{report.unexpected} of {report.rows + 1} rows failed with unexpected "
                "errors; stopping (see the log for tracebacks)."
            ) from error
    return skipped(name, "unexpected error", f"{type(error).__name__}: {error}")


def safe_process(process, row, report=None):
    """Runs ``process(row)``; an unexpected exception becomes a skip instead of ending the build.

    With a ``report``, too many unexpected errors (a systematic failure, not a bad file) re-raise.
    """
    outcome, failure = _run(process, row)
    return outcome if failure is None else _unexpected(row, failure, report)


def generation_threads():
    """Threads that decode and crop in the plain path (env TFDS_AFFECTNET_THREADS, default 8).

    OpenCV releases the GIL while decoding, resizing and encoding, so threads scale.
    """
    value = os.environ.get("TFDS_AFFECTNET_THREADS", "")
    return max(1, int(value)) if value.strip() else min(8, os.cpu_count() or 1)


def _ordered_map(function, items, threads):
    """``map`` over a thread pool, in order, with at most ``4 * threads`` rows in flight."""
    if threads <= 1:
        for item in items:
            yield item, function(item)
        return
    window = 4 * threads
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        pending = collections.deque()
        for item in items:
            pending.append((item, pool.submit(function, item)))
            if len(pending) >= window:
                item, future = pending.popleft()
                yield item, future.result()
        while pending:
            item, future = pending.popleft()
            yield item, future.result()


def generate(rows, process, report, extra_outcomes=(), threads=None):
    """Plain generation: yields ``(key, example)`` in row order and writes the report at the end.

    Rows are streamed: a thread pool decodes a small window of them ahead, never the whole split.

    Args:
        rows: iterable of rows (streamed; never materialised here).
        process: row -> `Outcome` (picklable; shared with the Beam path).
        report: the split's `SplitReport`.
        extra_outcomes: skips found before the loop (e.g. orphan annotations); they go into the
            report and skip log.
        threads: worker threads (default `generation_threads()`).
    """
    for outcome in extra_outcomes:
        report.add_extra(outcome)
    threads = generation_threads() if threads is None else threads
    completed = False
    try:
        for row, (outcome, failure) in _ordered_map(
            functools.partial(_run, process), rows, threads
        ):
            if failure is not None:
                outcome = _unexpected(row, failure, report)
            report.add(outcome)
            if outcome.kind == EXAMPLE:
                yield outcome.key, outcome.example
        completed = True
    finally:
        if not completed:
            logging.warning("%s/%s: generation stopped early.", report.dataset, report.split)
        report.write()


def _counter_names(split, outcome):
    """Beam counters of an outcome: one for its kind and reason, one per note of an example."""
    if outcome.kind == EXAMPLE:
        return [f"{split}|{EXAMPLE}|"] + [f"{split}|{NOTED}|{n.reason}" for n in outcome.notes]
    return [f"{split}|{outcome.kind}|{outcome.reason}"]


def beam_generate(work_items, expand, process, log_dir, dataset, split, extra_outcomes=()):
    """Beam generation: ``beam.Create(work_items) | FlatMap(expand) | ParDo(process)``.

    apache-beam is the optional ``beam`` extra (``make test`` runs it). ``expand`` turns one
    work item (a chunk of CSV rows, a list of rows) into rows on the worker; ``process`` is the
    same row function as in the plain path. Skipped files are written to ``skipped_<split>.tsv``
    and the notes of kept examples to ``notes_<split>.tsv`` in ``log_dir``; the counts are Beam
    counters in the ``tfds_affectnet`` namespace.
    """
    import tensorflow_datasets as tfds

    beam = tfds.core.lazy_imports.apache_beam
    extra_lines = [skip_log_line(outcome) for outcome in extra_outcomes]

    class _ProcessRow(beam.DoFn):
        def process(self, row):
            outcome = safe_process(process, row)
            for name in _counter_names(split, outcome):
                beam.metrics.Metrics.counter(BEAM_NAMESPACE, name).inc()
            if outcome.kind == EXAMPLE:
                for line in note_log_lines(outcome):
                    yield beam.pvalue.TaggedOutput(NOTED, line)
                yield outcome.key, outcome.example
            elif outcome.kind == SKIPPED:
                yield beam.pvalue.TaggedOutput(SKIPPED, skip_log_line(outcome))

    @beam.ptransform_fn
    def _generate(pipeline_begin):
        rows = (
            pipeline_begin
            | f"{split}_work_items" >> beam.Create(list(work_items))
            | f"{split}_rows" >> beam.FlatMap(expand)
            | f"{split}_reshuffle" >> beam.Reshuffle()
        )
        results = rows | f"{split}_process" >> beam.ParDo(_ProcessRow()).with_outputs(
            SKIPPED, NOTED, main=EXAMPLE
        )
        skipped_lines = results[SKIPPED]
        if extra_lines:
            extra = pipeline_begin | f"{split}_extra_skips" >> beam.Create(extra_lines)
            skipped_lines = (skipped_lines, extra) | f"{split}_all_skips" >> beam.Flatten()
        _ = skipped_lines | f"{split}_skip_log" >> beam.io.WriteToText(
            str(epath.Path(log_dir) / f"skipped_{split}"),
            file_name_suffix=".tsv",
            shard_name_template="",
            header=SKIP_LOG_HEADER,
        )
        _ = results[NOTED] | f"{split}_notes_log" >> beam.io.WriteToText(
            str(epath.Path(log_dir) / f"notes_{split}"),
            file_name_suffix=".tsv",
            shard_name_template="",
            header=NOTES_LOG_HEADER,
        )
        return results[EXAMPLE]

    logging.info("%s/%s: generating with Apache Beam.", dataset, split)
    return _generate()


class GenerationMixin:
    """Lets a builder know whether Beam was asked for, and reports Beam's counters.

    TFDS runs ``_generate_examples``'s Beam branch only inside a pipeline, which it creates when
    ``DownloadConfig(beam_runner=...)`` or ``beam_options`` is set (``tfds build
    --beam_pipeline_options=...``). The builder cannot see the download config otherwise, so this
    records it.
    """

    _use_beam = False

    def _download_and_prepare(self, dl_manager, download_config=None):
        self._use_beam = bool(
            download_config is not None
            and (download_config.beam_runner is not None or download_config.beam_options)
        )
        return super()._download_and_prepare(dl_manager, download_config)

    def _process_pipeline_result(self, pipeline_result):
        import tensorflow_datasets as tfds

        beam = tfds.core.lazy_imports.apache_beam
        metrics = pipeline_result.metrics().query(
            beam.metrics.MetricsFilter().with_namespace(BEAM_NAMESPACE)
        )
        counts = collections.defaultdict(dict)
        for counter in metrics["counters"]:
            split, kind, reason = counter.key.metric.name.split("|", 2)
            value = counter.committed if counter.committed is not None else counter.attempted
            counts[split][f"{kind}: {reason}" if reason else kind] = value
        for split, split_counts in sorted(counts.items()):
            dataset = f"{self.name}/{self.builder_config.name}"
            report = {"dataset": dataset, "split": split, "counts": split_counts}
            (self.data_path / f"report_{split}.json").write_text(json.dumps(report, indent=2))
            summary = f"{dataset} split '{split}' (Beam): " + ", ".join(
                f"{key}: {value}" for key, value in sorted(split_counts.items())
            )
            logging.info("%s", summary)
            print(summary, flush=True)
