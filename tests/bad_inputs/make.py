"""Build the bad-input corpus: valid artifacts, then broken copies of them.

:data:`CASES` is the static list of command lines (it needs no files, so pytest can
parametrize over it); :func:`build` writes every input they name under a folder, plus
the output files that already exist before a case runs. Paths in a case are relative to
that folder, which is the working directory of the subprocess, so the messages name
exactly the paths the case gave.

Each case says what the one ``eenet: error:`` line on stderr must contain: the file or
option, the field, and a word of what was expected. Every command has cases, ``dump``,
``profile`` and ``plot`` included (they need torch and matplotlib, which are required
dependencies: a broken import fails those cases, it does not drop them). A case with
``xfail`` records a known product bug outside this suite's files; it turns into a pass
once fixed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

K, C = 3, 5
COSTS = [1.0, 2.0, 3.0]
N = 240

EVAL = ("--methods", "maxprob,oracle", "--budgets", "2ms")
FIT = ("--budget", "2ms", "--method", "maxprob")
GOOD = "in/good.parquet"
POLICY = "in/policy.json"
RESULTS = "in/results.json"
OLD_OUTPUT = b'{"previous": "output", "must": "survive"}\n'

# chmod 000 does not stop root from reading (CI runs as root); see _unreadable_case
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass(frozen=True)
class Case:
    id: str
    command: str  # which subcommand this case is about (for counting)
    args: tuple[str, ...]  # after `python -m eenet_cli`
    expect: tuple[str, ...]  # substrings of the error line
    output: str | None = None  # the -o target, relative to the corpus folder
    existing: bool = False  # the output file exists before the run (and must survive)
    usage: bool = False  # a click usage error: a few lines are fine
    xfail: str | None = None  # a known product bug outside this suite's reach (the reason names it)


def _out(case_id: str, name: str) -> str:
    return f"out/{case_id}/{name}"


def _evaluate(case_id: str, preds: str | None, *extra: str, expect: tuple[str, ...], existing: bool = False, base=EVAL, **kw) -> Case:
    out = _out(case_id, "results.json")
    args = ("evaluate", *([preds] if preds else []), *base, *extra, "-o", out)
    return Case(case_id, "evaluate", args, expect, output=out, existing=existing, **kw)


def _fit(case_id: str, preds: str, *extra: str, expect: tuple[str, ...], existing: bool = False, base=FIT, **kw) -> Case:
    out = _out(case_id, "policy.json")
    return Case(case_id, "fit", ("fit", preds, *base, *extra, "-o", out), expect, output=out, existing=existing, **kw)


def _apply(case_id: str, policy: str, preds: str = GOOD, *extra: str, expect: tuple[str, ...], existing: bool = False, out_name: str = "exits.parquet", **kw) -> Case:
    out = _out(case_id, out_name)
    return Case(case_id, "apply", ("apply", policy, preds, *extra, "-o", out), expect, output=out, existing=existing, **kw)


# --------------------------------------------------------------------------- the cases

def _predictions_cases() -> list[Case]:
    """Broken predictions files, mostly through evaluate (the command most people run)."""
    p = "in/{}.parquet".format
    e = _evaluate
    return [
        e("pq_not_parquet", p("not_parquet"), expect=(p("not_parquet"), "not a readable Parquet file")),
        e("pq_empty", p("empty"), expect=(p("empty"), "Parquet")),
        e("pq_truncated", p("truncated"), expect=(p("truncated"), "Parquet")),
        e("pq_zero_rows", p("zero_rows"), expect=(p("zero_rows"), "no rows")),
        e("pq_label_float", p("label_float"), expect=(p("label_float"), "label", "int64", "double")),
        e("pq_label_string", p("label_string"), expect=(p("label_string"), "label", "int64", "string")),
        e("pq_exit_list_int", p("exit_list_int"), expect=(p("exit_list_int"), "exit_1", "float32")),
        e("pq_exit_plain_float", p("exit_plain_float"), expect=(p("exit_plain_float"), "exit_0", "fixed_size_list")),
        e("pq_exit_variable_list", p("exit_variable_list"), expect=(p("exit_variable_list"), "exit_0", "fixed_size_list")),
        e("pq_class_counts_disagree", p("class_counts"), expect=(p("class_counts"), "exit_2", "classes")),
        e("pq_exit_gap", p("exit_gap"), expect=(p("exit_gap"), "exit columns", "no gaps")),
        e("pq_no_exit_columns", p("no_exits"), expect=(p("no_exits"), "exit_0", "exit columns")),
        e("pq_nan_scores", p("nan_scores"), expect=(p("nan_scores"), "exit_1", "non-finite")),
        e("pq_inf_scores", p("inf_scores"), expect=(p("inf_scores"), "exit_0", "non-finite")),
        e("pq_null_scores", p("null_scores"), expect=(p("null_scores"), "exit_0", "null")),
        e("pq_probs_not_summing", p("probs_sum"), expect=(p("probs_sum"), "exit_0", "sums to")),
        e("pq_probs_negative", p("probs_negative"), expect=(p("probs_negative"), "eenet.scores", "negative")),
        e("pq_scores_kind_unknown", p("scores_kind"), expect=(p("scores_kind"), "eenet.scores", "'logits' or 'probs'")),
        e("pq_label_missing", p("no_label"), expect=(p("no_label"), "label", "label column")),
        e("pq_label_negative", p("label_negative"), expect=(p("label_negative"), "label", "outside [0, 5)")),
        e("pq_label_too_big", p("label_big"), expect=(p("label_big"), "label", "outside [0, 5)")),
        e("pq_label_null", p("label_null"), expect=(p("label_null"), "label", "row 4 has no value (null)")),
        e("pq_duplicate_ids", p("dup_ids"), expect=(p("dup_ids"), "sample_id", "more than once")),
        e("pq_no_val_rows", p("no_val"), expect=(p("no_val"), "split", "'val'")),
        e("pq_no_test_rows", p("no_test"), expect=(p("no_test"), "split", "'test'")),
        e("pq_unknown_split", p("bad_split"), expect=(p("bad_split"), "split", "'tset'", "val")),
        e("pq_split_not_string", p("split_int"), expect=(p("split_int"), "split", "string")),
        e("pq_no_split_column", p("no_split"), expect=(p("no_split"), "split", "--val-fraction")),
        e("pq_version_2", p("version2"), expect=(p("version2"), "eenet.version", "version 1", "upgrade")),
        e("pq_wrong_format", p("wrong_format"), expect=(p("wrong_format"), "eenet.format", "'predictions'")),
        e("pq_metadata_not_json", p("meta_not_json"), expect=(p("meta_not_json"), "eenet.num_classes", "JSON")),
        e("pq_metadata_num_exits_wrong", p("meta_k"), expect=(p("meta_k"), "eenet.num_exits", "4")),
        e("pq_metadata_costs_bad", p("meta_costs"), expect=(p("meta_costs"), "eenet.costs", "increasing")),
        e("pq_empty_folder", "in/empty_dir", expect=("in/empty_dir", "no .parquet")),
        e("pq_parts_disagree", "in/parts_disagree", expect=("in/parts_disagree", "schema differs")),
        e("pq_missing_file", "in/no_such.parquet", expect=("in/no_such.parquet", "no such file")),
        e("pq_broken_symlink", "in/dangling.parquet", expect=("in/dangling.parquet", "which does not exist")),
        _unreadable_case(),
        e("pq_part_is_a_directory", "in/part_dir", expect=("in/part_dir/part-1.parquet", "is a directory")),
        e("pq_pickle", p("pickle"), expect=(p("pickle"), "Parquet")),
        e("pq_policy_as_predictions", POLICY, expect=(POLICY, "Parquet")),
        e("pq_existing_output_kept", p("nan_scores"), expect=(p("nan_scores"), "non-finite"), existing=True),
        # the same broken files through fit and apply
        _fit("fit_truncated", p("truncated"), expect=(p("truncated"), "Parquet")),
        _fit("fit_label_missing", p("no_label"), expect=(p("no_label"), "label", "label column")),
        _fit("fit_no_val_rows", p("no_val"), expect=(p("no_val"), "split", "'val'")),
        _fit("fit_unknown_split", p("bad_split"), expect=(p("bad_split"), "split", "'tset'")),
        _fit("fit_label_too_big", p("label_big"), expect=(p("label_big"), "label", "outside")),
        _fit("fit_version_2", p("version2"), expect=(p("version2"), "version", "upgrade"), existing=True),
        _fit("fit_predictions_dir_empty", "in/empty_dir", expect=("in/empty_dir", "no .parquet")),
        _apply("apply_predictions_truncated", POLICY, p("truncated"), expect=(p("truncated"), "Parquet")),
        _apply("apply_predictions_nan", POLICY, p("nan_scores"), expect=(p("nan_scores"), "non-finite"), existing=True),
        _apply("apply_predictions_other_k", POLICY, p("k4"), expect=(POLICY, "num_exits", "3 exits", "4")),
        _apply("apply_predictions_other_c", POLICY, p("c7"), expect=(POLICY, "num_classes", "5 classes", "7")),
    ]


def _unreadable_case() -> Case:
    """A predictions file the operating system refuses to read. For other users it is a file
    with mode 000. Root reads those anyway, so as root it is a folder whose one part file is
    itself a folder: opening that as a file fails (EISDIR) for every user, root included."""
    path = "in/unreadable.parquet"
    if IS_ROOT:
        return _evaluate("pq_unreadable", path, expect=(path, "is a directory"))
    return _evaluate("pq_unreadable", path, expect=(path, "permission denied"))


def _costs_cases() -> list[Case]:
    c = "in/costs_{}.json".format
    e = _evaluate
    return [
        e("costs_not_increasing", GOOD, "--costs", c("not_increasing"), expect=(c("not_increasing"), "costs", "strictly increasing")),
        e("costs_non_positive", GOOD, "--costs", c("zero"), expect=(c("zero"), "costs", "positive")),
        e("costs_wrong_length", GOOD, "--costs", c("length"), expect=(c("length"), "costs", "4 costs", "3 exits")),
        e("costs_not_json", GOOD, "--costs", c("not_json"), expect=(c("not_json"), "JSON")),
        e("costs_nan_literal", GOOD, "--costs", c("nan"), expect=(c("nan"), "NaN")),
        e("costs_unknown_unit", GOOD, "--costs", c("unit"), expect=(c("unit"), "unit", "'fortnights'", "ms")),
        e("costs_flops_vs_time_budget", GOOD, "--costs", c("flops"), expect=("--budgets", "FLOP", "GFLOPs")),
        e("costs_version_2", GOOD, "--costs", c("v2"), expect=(c("v2"), "version", "version 1")),
        e("costs_wrong_format", GOOD, "--costs", POLICY, expect=(POLICY, "format", "'costs'")),
        e("costs_strings", GOOD, "--costs", c("strings"), expect=(c("strings"), "costs", "numbers")),
        e("costs_missing_unit", GOOD, "--costs", c("no_unit"), expect=(c("no_unit"), "unit")),
        e("costs_is_directory", GOOD, "--costs", "in/empty_dir", expect=("in/empty_dir", "directory")),
        e("costs_missing_file", GOOD, "--costs", "in/no_such_costs.json", expect=("in/no_such_costs.json", "no such file")),
        e("costs_inline_decreasing", GOOD, "--costs", "3,2,1ms", expect=("--costs 3,2,1ms", "increasing")),
        e("costs_inline_negative", GOOD, "--costs", "-1,2,3ms", expect=("--costs -1,2,3ms", "positive")),
        e("costs_inline_unit", GOOD, "--costs", "1,2,3parsecs", expect=("--costs 1,2,3parsecs", "unit")),
        e("costs_inline_garbage", GOOD, "--costs", "fast,slow", expect=("fast,slow", "--costs")),
        e("costs_empty", GOOD, "--costs", "", expect=("--costs", "empty")),
        _fit("fit_costs_blank", GOOD, "--costs", " ", expect=("--costs", "empty")),
        _fit("fit_costs_flops_vs_time", GOOD, "--costs", c("flops"), expect=("--budget", "FLOP", "GFLOPs")),
        _fit("fit_costs_not_json", GOOD, "--costs", c("not_json"), expect=(c("not_json"), "JSON")),
    ]


def _budget_cases() -> list[Case]:
    def e(case_id, budgets, expect, **kw):
        return _evaluate(case_id, GOOD, "--budgets", budgets, expect=expect, base=("--methods", "maxprob"), **kw)

    return [
        e("budgets_under_c1", "0.5ms", ("--budgets", "1ms", "first exit")),
        e("budgets_negative", "-2ms", ("--budgets", "positive")),
        e("budgets_zero", "0", ("--budgets", "positive")),
        e("budgets_unparseable", "fast", ("--budgets", "'fast'", "6ms")),
        e("budgets_empty", "", ("--budgets", "no budgets")),
        e("budgets_empty_list", ",", ("--budgets", "no budgets")),
        e("budgets_range_zero_step", "1ms:3ms:0ms", ("--budgets", "positive")),
        e("budgets_range_reversed", "3ms:1ms:0.5ms", ("--budgets", "ends before it starts")),
        e("budgets_range_two_parts", "1ms:3ms", ("--budgets", "start:stop:step")),
        e("budgets_range_too_long", "1ms:3ms:0.0000001ms", ("--budgets", "at most")),
        e("budgets_unknown_unit", "3parsecs", ("--budgets", "unit", "'parsecs'")),
        e("budgets_percent_zero", "0%", ("--budgets", "positive")),
        e("budgets_nan", "nan", ("--budgets", "'nan'")),
        _fit("fit_budget_under_c1", GOOD, base=("--budget", "500us", "--method", "maxprob"), expect=("--budget", "0.5ms", "1ms")),
        _fit("fit_budget_negative", GOOD, base=("--budget", "-1", "--method", "maxprob"), expect=("--budget", "positive")),
        _fit("fit_budget_zero", GOOD, base=("--budget", "0ms", "--method", "maxprob"), expect=("--budget", "positive")),
        _fit("fit_budget_unparseable", GOOD, base=("--budget", "6 ms please", "--method", "maxprob"), expect=("--budget", "6 ms please")),
        _fit("fit_budget_flops_vs_time", GOOD, base=("--budget", "2GFLOPs", "--method", "maxprob"), expect=("--budget", "FLOP", "ms")),
        _fit("fit_budget_range", GOOD, base=("--budget", "1ms:2ms:1ms", "--method", "maxprob"), expect=("--budget", "1ms:2ms:1ms")),
    ]


def _policy_cases() -> list[Case]:
    p = "in/policy_{}.json".format
    return [
        _apply("policy_version_4", p("v4"), expect=(p("v4"), "version", "version 3", "upgrade"), existing=True),
        _apply("policy_version_0", p("v0"), expect=(p("v0"), "version", "0")),
        _apply("policy_other_k", p("k4"), expect=(p("k4"), "num_exits", "4 exits", "3")),
        _apply("policy_other_c", p("c7"), expect=(p("c7"), "num_classes", "7 classes", "5")),
        _apply("policy_threshold_string", p("thr_string"), expect=(p("thr_string"), "thresholds", "finite number")),
        _apply("policy_threshold_nan_literal", p("thr_nan"), expect=(p("thr_nan"), "NaN")),
        _apply("policy_threshold_last_not_null", p("thr_last"), expect=(p("thr_last"), "thresholds", "null")),
        _apply("policy_threshold_count", p("thr_count"), expect=(p("thr_count"), "thresholds", "3 thresholds")),
        _apply("policy_unknown_key", p("unknown_key"), expect=(p("unknown_key"), "unknown key", "'weights_url'")),
        _apply("policy_unknown_scorer", p("scorer_type"), expect=(p("scorer_type"), "scorer.type", "'pickle'", "maxprob")),
        _apply("policy_scorer_not_object", p("scorer_list"), expect=(p("scorer_list"), "scorer", "object")),
        _apply("policy_eenet_weights_shape", p("eenet_shape"), expect=(p("eenet_shape"), "scorer.exits[1]", "[H, 9]", "[4, 8]")),
        _apply("policy_eenet_weights_ragged", p("eenet_ragged"), expect=(p("eenet_ragged"), "scorer.exits[0]", "numeric")),
        _apply("policy_eenet_weights_missing", p("eenet_missing"), expect=(p("eenet_missing"), "scorer.exits[2]", "'assign_bias'")),
        _apply("policy_eenet_slope_string", p("eenet_slope"), expect=(p("eenet_slope"), "negative_slope", "number")),
        _apply("policy_missing_thresholds", p("no_thresholds"), expect=(p("no_thresholds"), "thresholds", "missing")),
        _apply("policy_costs_decreasing", p("costs_down"), expect=(p("costs_down"), "costs.costs", "increasing")),
        _apply("policy_budget_string", p("budget_string"), expect=(p("budget_string"), "budget", "number")),
        _apply("policy_not_json", p("not_json"), expect=(p("not_json"), "JSON")),
        _apply("policy_duplicate_key", p("dup_key"), expect=(p("dup_key"), "duplicate key")),
        _apply("policy_is_results", RESULTS, expect=(RESULTS, "format", "'policy'", "'results'")),
        _apply("policy_is_parquet", GOOD, expect=(GOOD, "JSON")),
        _apply("policy_is_directory", "in/empty_dir", expect=("in/empty_dir", "directory")),
        _apply("policy_missing", "in/no_such_policy.json", expect=("in/no_such_policy.json", "no such file")),
        _apply("policy_top_level_list", p("list"), expect=(p("list"), "JSON object")),
        _apply("apply_split_unknown", POLICY, GOOD, "--split", "tset", expect=(GOOD, "split", "'tset'")),
        _apply("apply_output_extension", POLICY, GOOD, expect=("--output", ".parquet or .csv"), out_name="exits.json"),
    ]


def _results_and_options_cases() -> list[Case]:
    r = "in/results_{}.json".format
    e = _evaluate
    return [
        e("check_not_results", GOOD, "--check", POLICY, expect=(POLICY, "format", "results", "'policy'")),
        e("check_version_2", GOOD, "--check", r("v2"), expect=(r("v2"), "version", "version 1", "upgrade")),
        e("check_nan_literal", GOOD, "--check", r("nan"), expect=(r("nan"), "NaN")),
        e("check_record_missing_accuracy", GOOD, "--check", r("no_accuracy"), expect=(r("no_accuracy"), "results[0]", "'accuracy' is a required property")),
        e("check_accuracy_string", GOOD, "--check", r("acc_string"), expect=(r("acc_string"), "results[0].accuracy", "is not of type 'number'")),
        e("check_no_records", GOOD, "--check", r("empty"), expect=(r("empty"), "no result records")),
        e("check_csv_garbage", GOOD, "--check", "in/results_garbage.csv", expect=("in/results_garbage.csv", "method")),
        e("check_parquet_predictions", GOOD, "--check", "in/results_preds.parquet", expect=("in/results_preds.parquet", "results")),
        e("check_is_directory", GOOD, "--check", "in/empty_dir", expect=("in/empty_dir", "directory")),
        e("tolerance_negative", GOOD, "--tolerance", "-1", expect=("--tolerance", "non-negative")),
        e("tolerance_nan", GOOD, "--tolerance", "nan", expect=("--tolerance", "non-negative")),
        e("tolerance_not_number", GOOD, "--tolerance", "lots", expect=("--tolerance", "number"), usage=True),
        e("val_without_test", None, "--val", GOOD, expect=("--val", "--test")),
        e("test_without_val", None, "--test", GOOD, expect=("--val", "--test")),
        e("val_test_and_predictions", GOOD, "--val", GOOD, "--test", GOOD, expect=("PREDICTIONS", "either")),
        e("val_test_shape_mismatch", None, "--val", GOOD, "--test", "in/k4.parquet", expect=("in/k4.parquet", "exits")),
        e("val_fraction_out_of_range", "in/no_split.parquet", "--val-fraction", "1.5", expect=("--val-fraction", "between 0 and 1")),
        e("no_predictions", None, expect=("PREDICTIONS", "missing")),
        e("methods_unknown", GOOD, base=("--methods", "maxprob,greedy", "--budgets", "2ms"), expect=("--method", "'greedy'", "maxprob")),
        e("output_missing_folder", GOOD, expect=("out/output_missing_folder/results.json", "does not exist"), base=EVAL),
        e("output_unknown_extension", GOOD, expect=("--output", ".json, .parquet or .csv")),
        e("output_is_directory", GOOD, expect=("directory",)),
        _fit("fit_method_unknown", GOOD, base=("--budget", "2ms", "--method", "greedy"), expect=("--method", "'greedy'", "maxprob")),
        _fit("fit_method_oracle", GOOD, base=("--budget", "2ms", "--method", "oracle"), expect=("--method", "'oracle'")),
        _fit("fit_output_missing_folder", GOOD, expect=("does not exist",)),
        _fit("fit_missing_budget", GOOD, base=("--method", "maxprob"), expect=("--budget", "give --budget")),
        _fit("fit_confidence_out_of_range", GOOD, "--confidence", "1.5", expect=("--confidence", "between 0 and 1")),
        _fit("fit_max_drop_unreadable", GOOD, "--confidence", "0.9", "--max-drop", "lots", expect=("--max-drop", "a share like 0.9")),
        Case("certify_no_certificate", "certify", ("certify", POLICY, GOOD, "--calibration-rows"), (POLICY, "certificate", "no certificate")),
        Case("certify_confidence_unreadable", "certify", ("certify", POLICY, GOOD, "--confidence", "sure"), ("--confidence", "a share like 0.9")),
        Case("certify_other_shape", "certify", ("certify", POLICY, "in/k4.parquet"), (POLICY, "num_exits")),
        Case("certify_predictions_truncated", "certify", ("certify", POLICY, "in/truncated.parquet"), ("in/truncated.parquet", "Parquet")),
        Case("certify_split_unknown", "certify", ("certify", POLICY, GOOD, "--split", "tset"), (GOOD, "split", "'tset'")),
        Case("certify_seed_negative", "certify", ("certify", POLICY, GOOD, "--seed", "-3"), ("--seed",)),
        Case("schema_unknown", "schema", ("schema", "pickle"), ("NAME", "'pickle'", "policy")),
        Case("unknown_command", "misc", ("frobnicate", GOOD), ("frobnicate",), usage=True),
    ]


def _adjust(cases: list[Case]) -> list[Case]:
    """Cases whose -o target is special: a missing folder, a bad extension, a folder."""
    out = []
    for c in cases:
        if c.id in ("output_missing_folder", "fit_output_missing_folder"):
            missing = f"out/{c.id}/no_such_folder/" + Path(c.output).name
            args = tuple(missing if a == c.output else a for a in c.args)
            c = Case(c.id, c.command, args, (missing, *(x for x in c.expect if x != c.output)), output=missing, usage=c.usage)
        elif c.id == "dump_output_missing_folder":
            missing = f"out/{c.id}/no_such_folder/preds.parquet"
            c = Case(c.id, c.command, tuple(missing if a == c.output else a for a in c.args), (missing, *c.expect), output=missing)
        elif c.id == "output_unknown_extension":
            target = f"out/{c.id}/results.txt"
            c = Case(c.id, c.command, tuple(target if a == c.output else a for a in c.args), c.expect, output=target)
        elif c.id == "output_is_directory":
            target = f"out/{c.id}"
            c = Case(c.id, c.command, tuple(target if a == c.output else a for a in c.args), (target, *c.expect), output=None)
        out.append(c)
    return out


def model_cases() -> list[Case]:
    """profile / dump / export / plot cases: always part of the corpus."""
    return _model_cases() + _export_cases() + _plot_cases()


TINY = "in/model_tiny.npz"  # 8 digits-shaped samples: a case that does run the model ends fast


def _dump(case_id: str, model: str, *extra: str, expect: tuple[str, ...], data: str = TINY, existing: bool = False, **kw) -> Case:
    out = _out(case_id, "preds.parquet")
    args = ("dump", model, *(("--data", data) if data else ()), "--split", "val", *extra, "-o", out)
    return Case(case_id, "dump", args, expect, output=out, existing=existing, **kw)


def _profile(case_id: str, model: str, *extra: str, expect: tuple[str, ...], **kw) -> Case:
    out = _out(case_id, "costs.json")
    return Case(case_id, "profile", ("profile", model, "--repeats", "2", "--warmup", "0", *extra, "-o", out), expect, output=out, **kw)


def _export(case_id: str, model: str, policy: str, *extra: str, expect: tuple[str, ...], **kw) -> Case:
    out = _out(case_id, "model.eenet")
    return Case(case_id, "export", ("export", model, "--policy", policy, *extra, "-o", out), expect, output=out, **kw)


DIGITS_POLICY = "in/model_digits_policy.json"  # fits digits-cnn: 4 exits, 10 classes


def _export_cases() -> list[Case]:
    m = "in/model_{}".format
    return [
        _export("export_no_such_policy", "digits-cnn", "in/no_such_policy.json", expect=("in/no_such_policy.json", "no such file")),
        _export("export_policy_other_k", "digits-cnn", POLICY, expect=(POLICY, "4")),
        _export("export_policy_version_4", "digits-cnn", m("policy_v4.json"), expect=(m("policy_v4.json"), "version", "upgrade")),
        _export("export_weights_malicious_pickle", "digits-cnn", DIGITS_POLICY, "--weights", m("payload.pt"),
                expect=(m("payload.pt"), "weights_only=True")),
        _export("export_unknown_builtin", "resnet9000", DIGITS_POLICY, expect=("resnet9000", "unknown model")),
        _export("export_input_shape", "digits-cnn", DIGITS_POLICY, "--input-shape", "three,32", expect=("--input-shape", "3,32,32")),
        _export("export_wrong_input_shape", "digits-cnn", DIGITS_POLICY, "--input-shape", "3,32,32", expect=("--input-shape", "cannot run")),
        _export("export_data_and_shape", "digits-cnn", DIGITS_POLICY, "--data", TINY, "--input-shape", "1,8,8", expect=("--input-shape", "--data")),
        _export("export_all_exits_model", "json:loads", DIGITS_POLICY, expect=("json:loads",)),
        Case("export_onto_the_policy", "export", ("export", "digits-cnn", "--policy", DIGITS_POLICY, "-o", DIGITS_POLICY),
             (DIGITS_POLICY, "--output", "is also the policy")),
        _dump("dump_bundle_newer_version", m("bundle_v2.eenet"), expect=(m("bundle_v2.eenet"), "version", "upgrade")),
        _dump("dump_bundle_with_a_pickle", m("bundle_pickle.eenet"), expect=(m("bundle_pickle.eenet"), "data.pkl", "refused")),
        _profile("profile_bundle_not_a_zip", m("not_a_bundle.eenet"), expect=(m("not_a_bundle.eenet"), "not an eenet bundle")),
        _profile("profile_batch_sizes_without_policy", "digits-cnn", "--batch-size", "1,8", expect=("--batch-size", "policy")),
        _profile("profile_batch_size_list_zero", "digits-cnn", "--policy", POLICY, "--data", TINY, "--batch-size", "1,0",
                 expect=("--batch-size", "at least 1")),
    ]


def _plot(case_id: str, *inputs: str, expect: tuple[str, ...], out_name: str = "figure.png", existing: bool = False, **kw) -> Case:
    out = _out(case_id, out_name)
    return Case(case_id, "plot", ("plot", *inputs, "-o", out), expect, output=out, existing=existing, **kw)


def _model_cases() -> list[Case]:
    m = "in/model_{}".format
    return [
        _dump("dump_no_such_module", "nosuchpkg.models:build", expect=("nosuchpkg.models:build", "MODEL", "no module named 'nosuchpkg'")),
        _dump("dump_no_such_factory", "json:build_model", expect=("json:build_model", "MODEL", "no attribute 'build_model'")),
        _dump("dump_unknown_builtin", "resnet9000", expect=("resnet9000", "unknown model", "digits-cnn")),
        _dump("dump_data_is_a_pickle", "digits-cnn", data=m("pickle.npz"), expect=(m("pickle.npz"), "--data", "allow_pickle=False")),
        _dump("dump_data_object_arrays", "digits-cnn", data=m("objects.npz"), expect=(m("objects.npz"), "--data", "pickled")),
        _dump("dump_data_without_y", "digits-cnn", data=m("no_y.npz"), expect=(m("no_y.npz"), "--data", "'y'")),
        _dump("dump_data_builtin_split", "digits-cnn", data="digits:banana", expect=("digits:banana", "--data", "digits:test")),
        _dump("dump_data_missing", "digits-cnn", data="in/no_such_data.npz", expect=("in/no_such_data.npz", "--data")),
        _dump("dump_weights_malicious_pickle", "digits-cnn", "--weights", m("payload.pt"),
              expect=(m("payload.pt"), "--weights", "weights_only=True")),
        _dump("dump_weights_pickle_protocol_4", "digits-cnn", "--weights", m("protocol4.pt"), expect=(m("protocol4.pt"), "--weights")),
        _dump("dump_weights_not_safetensors", "digits-cnn", "--weights", m("garbage.safetensors"),
              expect=(m("garbage.safetensors"), "--weights", "safetensors")),
        _dump("dump_weights_missing", "digits-cnn", "--weights", "in/no_such_weights.safetensors", expect=("in/no_such_weights.safetensors", "no such file")),
        _dump("dump_scores_kind", "digits-cnn", "--scores", "softmax", expect=("--scores", "logits or probs", "'softmax'")),
        _dump("dump_output_missing_folder", "digits-cnn", expect=("does not exist",)),
        _dump("dump_append_to_policy", "digits-cnn", "--append", expect=("--append", "Parquet"), existing=True),
        _dump("dump_model_arg", "digits-cnn", "--model-arg", "noequals", expect=("--model-arg", "key=value", "'noequals'")),
        _dump("dump_batch_size_zero", "digits-cnn", "--batch-size", "0", expect=("--batch-size", "at least 1")),
        _dump("dump_costs_not_increasing", "digits-cnn", "--costs", "in/costs_not_increasing.json",
              expect=("in/costs_not_increasing.json", "increasing")),
        _dump("dump_no_data", "digits-cnn", data="", expect=("--data",)),
        _profile("profile_no_such_module", "nosuchpkg.models:build", expect=("nosuchpkg.models:build", "no module named")),
        _profile("profile_unit", "digits-cnn", "--unit", "parsecs", expect=("--unit", "'parsecs'", "ms")),
        _profile("profile_repeats_zero", "digits-cnn", "--repeats", "0", expect=("--repeats", "at least 1")),
        _profile("profile_input_shape", "digits-cnn", "--input-shape", "three,32", expect=("--input-shape", "3,32,32")),
        _profile("profile_policy_without_data", "digits-cnn", "--policy", POLICY, expect=("--policy", "--data")),
        _profile("profile_policy_other_k", "digits-cnn", "--policy", POLICY, "--data", TINY, expect=(POLICY, "4")),
        _profile("profile_policy_version_4", "digits-cnn", "--policy", m("policy_v4.json"), "--data", TINY,
                 expect=(m("policy_v4.json"), "version", "upgrade")),
        _profile("profile_weights_malicious_pickle", "digits-cnn", "--weights", m("payload.pt"), expect=(m("payload.pt"), "weights_only=True")),
    ]


def _plot_cases() -> list[Case]:
    return [
        _plot("plot_policy_instead_of_results", POLICY, expect=(POLICY, "results file")),
        _plot("plot_results_v2", "in/results_v2.json", expect=("in/results_v2.json", "version", "upgrade"), existing=True),
        _plot("plot_results_nan", "in/results_nan.json", expect=("in/results_nan.json", "NaN")),
        _plot("plot_output_extension", RESULTS, expect=("--output", ".png, .svg or .pdf"), out_name="figure.jpg"),
        _plot("plot_pickle", "in/pickle.parquet", expect=("in/pickle.parquet", "Parquet")),
        _plot("plot_kind_needs_policy", RESULTS, "--kind", "scores", expect=(RESULTS, "--kind", "policy")),
        _plot("plot_policy_other_k", POLICY, "in/k4.parquet", expect=(POLICY, "num_exits", "4")),
        _plot("plot_policy_bad_scorer", "in/policy_scorer_type.json", GOOD, expect=("in/policy_scorer_type.json", "scorer.type")),
        _plot("plot_predictions_nan", POLICY, "in/nan_scores.parquet", expect=("in/nan_scores.parquet", "non-finite")),
        _plot("plot_missing", "in/no_such_results.json", expect=("in/no_such_results.json", "no such file")),
        _plot("plot_directory", "in/empty_dir", expect=("in/empty_dir", "directory")),
        _plot("plot_costs_file", "in/costs_good.json", expect=("in/costs_good.json", "costs")),
    ]


CASES: list[Case] = _adjust(
    _predictions_cases() + _costs_cases() + _budget_cases() + _policy_cases() + _results_and_options_cases() + model_cases()
)


# --------------------------------------------------------------------------- the inputs

def _base_arrays(n: int = N, k: int = K, c: int = C, seed: int = 0):
    from eenet_cli.synthetic import make_predictions

    return make_predictions(n, k, c, seed=seed, costs=[1.0 + j for j in range(k)])


def _columns(d) -> dict:
    import pyarrow as pa

    n, k, c = d.logits.shape
    cols = {f"exit_{j}": pa.FixedSizeListArray.from_arrays(pa.array(d.logits[:, j].reshape(-1)), c) for j in range(k)}
    cols["label"] = pa.array(d.labels)
    cols["split"] = pa.array(d.split.tolist(), pa.string())
    cols["sample_id"] = pa.array(np.arange(n, dtype=np.int64))
    return cols


def _meta(d, **over) -> dict[str, str]:
    n, k, c = d.logits.shape
    meta = {
        "format": "predictions", "version": 1, "num_exits": k, "num_classes": c, "scores": "logits",
        "costs": {"format": "costs", "version": 1, "unit": "ms", "costs": d.costs},
    }
    meta.update(over)
    return {key: json.dumps(v) for key, v in meta.items() if v is not None}


def _write_table(path: Path, cols: dict, meta: dict[str, str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(cols)
    table = table.replace_schema_metadata({f"eenet.{k}": v for k, v in meta.items()})
    pq.write_table(table, path)


def _fsl(values: np.ndarray, value_type=None):
    import pyarrow as pa

    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=value_type), values.shape[1])


def _predictions_inputs(d: Path) -> None:
    import pyarrow as pa

    base = _base_arrays()

    def put(name: str, mutate: Callable[[dict, dict], None] | None = None, arrays=None) -> Path:
        a = arrays or base
        cols, meta = _columns(a), _meta(a)
        if mutate:
            mutate(cols, meta)
        path = d / f"{name}.parquet"
        _write_table(path, cols, meta)
        return path

    good = put("good")
    raw = good.read_bytes()
    (d / "not_parquet.parquet").write_text("sample_id,label\n1,2\n")
    (d / "empty.parquet").write_bytes(b"")
    (d / "truncated.parquet").write_bytes(raw[: len(raw) // 2])
    (d / "pickle.parquet").write_bytes(b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00]\x94(K\x01K\x02K\x03e.")
    put("zero_rows", lambda c, m: c.update({k: v.slice(0, 0) for k, v in c.items()}))
    put("label_float", lambda c, m: c.update(label=pa.array(base.labels.astype(np.float64))))
    put("label_string", lambda c, m: c.update(label=pa.array([str(x) for x in base.labels])))
    put("exit_list_int", lambda c, m: c.update(exit_1=_fsl(base.logits[:, 1].astype(np.int32))))
    put("exit_plain_float", lambda c, m: c.update(exit_0=pa.array(base.logits[:, 0, 0])))
    put("exit_variable_list", lambda c, m: c.update(exit_0=pa.array(base.logits[:, 0].tolist(), pa.list_(pa.float32()))))
    put("class_counts", lambda c, m: c.update(exit_2=_fsl(base.logits[:, 2, :4])))
    put("exit_gap", lambda c, m: c.update(exit_3=c.pop("exit_2")))
    put("no_exits", lambda c, m: [c.pop(f"exit_{j}") for j in range(K)])

    def with_scores(bad: np.ndarray) -> Callable:
        return lambda c, m: c.update({f"exit_{j}": _fsl(bad[:, j]) for j in range(K)})

    nan = base.logits.copy()
    nan[17, 1, 3] = np.nan
    put("nan_scores", with_scores(nan))
    inf = base.logits.copy()
    inf[5, 0, 0] = np.inf
    put("inf_scores", with_scores(inf))
    put("null_scores", lambda c, m: c.update(exit_0=pa.FixedSizeListArray.from_arrays(
        pa.array(base.logits[:, 0].reshape(-1)), C, mask=pa.array(np.arange(N) == 3))))
    probs = np.exp(base.logits) / np.exp(base.logits).sum(-1, keepdims=True)
    probs_off = probs.copy()
    probs_off[9, 0] *= 1.5
    put("probs_sum", lambda c, m: (with_scores(probs_off)(c, m), m.update(scores='"probs"')))
    probs_neg = probs.copy()
    probs_neg[2, 1, 0] -= 0.5
    probs_neg[2, 1, 1] += 0.5
    put("probs_negative", lambda c, m: (with_scores(probs_neg)(c, m), m.update(scores='"probs"')))
    put("scores_kind", lambda c, m: m.update(scores='"softmax"'))
    put("no_label", lambda c, m: c.pop("label"))
    put("label_negative", lambda c, m: c.update(label=pa.array(np.where(np.arange(N) == 11, -1, base.labels))))
    put("label_big", lambda c, m: c.update(label=pa.array(np.where(np.arange(N) == 11, C, base.labels))))
    put("label_null", lambda c, m: c.update(label=pa.array([None if i == 4 else int(x) for i, x in enumerate(base.labels)], pa.int64())))
    ids = np.arange(N)
    ids[np.flatnonzero(base.split == "val")[1]] = np.flatnonzero(base.split == "val")[0]
    put("dup_ids", lambda c, m: c.update(sample_id=pa.array(ids)))
    put("no_val", lambda c, m: c.update(split=pa.array(["test"] * N)))
    put("no_test", lambda c, m: c.update(split=pa.array(["val"] * N)))
    put("bad_split", lambda c, m: c.update(split=pa.array(np.where(base.split == "test", "tset", "val").tolist())))
    put("split_int", lambda c, m: c.update(split=pa.array((base.split == "test").astype(np.int64))))
    put("no_split", lambda c, m: c.pop("split"))
    put("version2", lambda c, m: m.update(version="2"))
    put("wrong_format", lambda c, m: m.update(format='"policy"'))
    put("meta_not_json", lambda c, m: m.update(num_classes="five"))
    put("meta_k", lambda c, m: m.update(num_exits="4"))
    put("meta_costs", lambda c, m: m.update(costs=json.dumps({"format": "costs", "version": 1, "unit": "ms", "costs": [3, 2, 1]})))
    put("k4", arrays=_base_arrays(k=4))
    put("c7", arrays=_base_arrays(c=7))
    if IS_ROOT:
        (d / "unreadable.parquet" / "part-0.parquet").mkdir(parents=True)
    else:
        put("unreadable").chmod(0)
    (d / "part_dir").mkdir()
    put("part_dir/part-0")
    (d / "part_dir" / "part-1.parquet").mkdir()
    os.symlink(d / "gone.parquet", d / "dangling.parquet")
    (d / "empty_dir").mkdir()
    parts = d / "parts_disagree"
    parts.mkdir()
    put("parts_disagree/part-0")
    put("parts_disagree/part-1", lambda c, m: c.update(label=pa.array(base.labels.astype(np.int32))))
    (d / "results_preds.parquet").write_bytes(raw)


def _json(path: Path, obj, *, allow_nan: bool = False) -> None:
    path.write_text(json.dumps(obj, indent=1, allow_nan=allow_nan) + "\n")


def _costs_inputs(d: Path) -> None:
    good = {"format": "costs", "version": 1, "unit": "ms", "costs": COSTS}
    _json(d / "costs_good.json", good)
    _json(d / "costs_not_increasing.json", {**good, "costs": [1.0, 3.0, 2.0]})
    _json(d / "costs_zero.json", {**good, "costs": [0.0, 1.0, 2.0]})
    _json(d / "costs_length.json", {**good, "costs": [1.0, 2.0, 3.0, 4.0]})
    (d / "costs_not_json.json").write_text("unit: ms\ncosts: [1, 2, 3]\n")
    _json(d / "costs_nan.json", {**good, "costs": [1.0, float("nan"), 3.0]}, allow_nan=True)
    _json(d / "costs_unit.json", {**good, "unit": "fortnights"})
    _json(d / "costs_flops.json", {**good, "unit": "GFLOPs"})
    _json(d / "costs_v2.json", {**good, "version": 2})
    _json(d / "costs_strings.json", {**good, "costs": ["1ms", "2ms", "3ms"]})
    _json(d / "costs_no_unit.json", {k: v for k, v in good.items() if k != "unit"})


def eenet_scorer(k: int = K, c: int = C, hidden: int = 4, seed: int = 0) -> dict:
    """A valid EENet scorer with random weights (exit j sees C + 3 + j inputs)."""
    rng = np.random.default_rng(seed)
    exits = []
    for j in range(k):
        exits.append({
            "shared_weight": rng.normal(size=(hidden, c + 3 + j)).round(4).tolist(),
            "shared_bias": rng.normal(size=hidden).round(4).tolist(),
            "utility_weight": rng.normal(size=hidden).round(4).tolist(),
            "utility_bias": 0.1,
            "assign_weight": rng.normal(size=hidden).round(4).tolist(),
            "assign_bias": -0.1,
        })
    return {"type": "eenet", "features": ["class_probs", "max_prob", "entropy", "vote", "previous_utilities"],
            "negative_slope": 0.01, "exits": exits}


def _policy_inputs(d: Path, policy: dict) -> None:
    import copy

    def put(name: str, change: Callable[[dict], object], *, allow_nan: bool = False) -> None:
        doc = copy.deepcopy(policy)
        change(doc)
        _json(d / f"policy_{name}.json", doc, allow_nan=allow_nan)

    put("v4", lambda p: p.update(version=4))
    put("v0", lambda p: p.update(version=0))
    put("k4", lambda p: p.update(num_exits=4, thresholds=[0.5, 0.5, 0.5, None],
                                 costs={"unit": "ms", "costs": [1.0, 2.0, 3.0, 4.0]}))
    put("c7", lambda p: p.update(num_classes=7))
    put("thr_string", lambda p: p["thresholds"].__setitem__(0, "0.5"))
    put("thr_nan", lambda p: p["thresholds"].__setitem__(1, float("nan")), allow_nan=True)
    put("thr_last", lambda p: p["thresholds"].__setitem__(-1, 0.5))
    put("thr_count", lambda p: p["thresholds"].pop(0))
    put("unknown_key", lambda p: p.update(weights_url="http://example.invalid/w.pkl"))
    put("scorer_type", lambda p: p.update(scorer={"type": "pickle", "path": "w.pkl"}))
    put("scorer_list", lambda p: p.update(scorer=["maxprob"]))
    put("eenet_good", lambda p: p.update(scorer=eenet_scorer(), method="eenet"))

    def eenet_with(change: Callable[[dict], object]) -> Callable[[dict], None]:
        def f(p: dict) -> None:
            s = eenet_scorer()
            change(s)
            p.update(scorer=s, method="eenet")
        return f

    put("eenet_shape", eenet_with(lambda s: s["exits"][1].update(shared_weight=np.zeros((4, C + 3)).tolist())))
    put("eenet_ragged", eenet_with(lambda s: s["exits"][0]["shared_weight"][2].pop()))
    put("eenet_missing", eenet_with(lambda s: s["exits"][2].pop("assign_bias")))
    put("eenet_slope", eenet_with(lambda s: s.update(negative_slope="leaky")))
    put("no_thresholds", lambda p: p.pop("thresholds"))
    put("costs_down", lambda p: p.update(costs={"unit": "ms", "costs": [3.0, 2.0, 1.0]}))
    put("budget_string", lambda p: p.update(budget={"value": "two", "unit": "ms"}))
    (d / "policy_not_json.json").write_text("{'format': 'policy'}\n")
    text = json.dumps(policy, indent=1)
    (d / "policy_dup_key.json").write_text(text.replace('"method":', '"method": "entropy",\n "method":', 1))
    _json(d / "policy_list.json", [policy])


def _results_inputs(d: Path, results: dict) -> None:
    import copy

    def put(name: str, change: Callable[[dict], object], *, allow_nan: bool = False) -> None:
        doc = copy.deepcopy(results)
        change(doc)
        _json(d / f"results_{name}.json", doc, allow_nan=allow_nan)

    put("v2", lambda r: r.update(version=2))
    put("nan", lambda r: r["results"][0].update(accuracy=float("nan")), allow_nan=True)
    put("no_accuracy", lambda r: r["results"][0].pop("accuracy"))
    put("acc_string", lambda r: r["results"][0].update(accuracy="high"))
    put("empty", lambda r: r.update(results=[]))
    (d / "results_garbage.csv").write_text("a,b\n1,2\n3\n")


class Payload:
    """A pickle that would print when unpickled: proof that nothing unpickles it."""

    def __reduce__(self):
        return (print, ("UNPICKLED: this file ran code",))


def _model_inputs(d: Path) -> None:
    import pickle

    rng = np.random.default_rng(0)
    np.savez(d / "model_tiny.npz", x=rng.random((8, 1, 8, 8), dtype=np.float32), y=np.arange(8, dtype=np.int64))
    np.savez(d / "model_no_y.npz", x=np.zeros((4, 1, 8, 8), np.float32))
    np.savez(d / "model_objects.npz", x=np.array([{"a": 1}] * 4, dtype=object), y=np.zeros(4, np.int64))
    (d / "model_pickle.npz").write_bytes(pickle.dumps({"x": [[0.0] * 64], "y": [0]}, protocol=2))
    (d / "model_payload.pt").write_bytes(pickle.dumps({"state": Payload()}, protocol=2))
    (d / "model_protocol4.pt").write_bytes(pickle.dumps({"state": Payload()}, protocol=4))
    (d / "model_garbage.safetensors").write_bytes(b"\xff" * 64)


def _bundle_inputs(d: Path) -> None:
    """Broken bundles that need no export: a newer format version, a pickle member, not a zip."""
    import zipfile

    with zipfile.ZipFile(d / "model_bundle_v2.eenet", "w") as zf:
        zf.writestr("manifest.json", json.dumps({"format": "eenet-bundle", "version": 2, "members": {}}))
    with zipfile.ZipFile(d / "model_bundle_pickle.eenet", "w") as zf:
        zf.writestr("manifest.json", json.dumps({"format": "eenet-bundle", "version": 1}))
        zf.writestr("data.pkl", (d / "model_payload.pt").read_bytes())
    (d / "model_not_a_bundle.eenet").write_bytes(b"not a zip at all\n")


def _digits_policy_v4(d: Path) -> None:
    """A policy that fits digits-cnn (4 exits, 10 classes), but of version 4."""
    from eenet_cli import api
    from eenet_cli.synthetic import make_predictions

    s = make_predictions(300, 4, 10, seed=1, costs=[1.0, 2.0, 3.0, 4.0])
    preds = api.predictions_from_arrays(s.logits, s.labels, split=s.split, costs=s.costs)
    policy = api.fit_policy(preds, "2ms", method="maxprob")
    _json(d / "model_policy_v4.json", {**policy, "version": 4})
    _json(d / "model_digits_policy.json", policy)


def build(root: Path, cases: list[Case] = CASES) -> None:
    """Write every input under ``root/in`` and make each case's output folder."""
    from eenet_cli import api
    from eenet_cli.artifacts.files import write_json
    from eenet_cli.artifacts.predictions import read_predictions
    from eenet_cli.artifacts.results import write_results

    d = root / "in"
    d.mkdir(parents=True, exist_ok=True)
    _predictions_inputs(d)
    _costs_inputs(d)
    preds = read_predictions(d / "good.parquet")
    policy = api.fit_policy(preds, "2ms", method="maxprob")
    write_json(d / "policy.json", policy)
    _policy_inputs(d, policy)
    results = api.evaluate(preds, budgets=["2ms"], methods=["maxprob", "oracle"])
    write_results(d / "results.json", results)
    _results_inputs(d, results)
    if any(c.command in ("dump", "profile", "export") for c in cases):
        _model_inputs(d)
        _digits_policy_v4(d)
        _bundle_inputs(d)
    for c in cases:
        (root / "out" / c.id).mkdir(parents=True, exist_ok=True)
        if c.existing and c.output:
            (root / c.output).write_bytes(OLD_OUTPUT)


def counts(cases: list[Case] = CASES) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in cases:
        out[c.command] = out.get(c.command, 0) + 1
    return out


# --------------------------------------------------------------------------- compact predictions (issue 20)

def _compact(case_id: str, preds: str, *extra: str, expect: tuple[str, ...], existing: bool = False, **kw) -> Case:
    out = _out(case_id, "compact.parquet")
    return Case(case_id, "compact", ("compact", preds, *extra, "-o", out), expect, output=out, existing=existing, **kw)


def _compact_cases() -> list[Case]:
    p = "in/{}.parquet".format
    return [
        _compact("compact_not_parquet", p("not_parquet"), expect=(p("not_parquet"), "not a readable Parquet file")),
        _compact("compact_top_k_one", GOOD, "--top-k", "1", expect=("--top-k", "at least 2")),
        _compact("compact_top_k_above_classes", GOOD, "--top-k", "9", expect=("--top-k", "between 2", "(5)")),
        _compact("compact_already_compact", p("compact"), expect=(p("compact"), "already compact")),
        _compact("compact_nan_scores", p("nan_scores"), expect=(p("nan_scores"), "exit_1", "non-finite"), existing=True),
        _compact("compact_stdin", "-", expect=("PREDICTIONS", "stdin")),
        _compact("compact_no_exit_columns", p("no_exits"), expect=(p("no_exits"), "exit_0", "exit columns")),
        _fit("compact_fit_eenet_full_refused", p("compact"), base=("--budget", "2ms", "--method", "eenet", "--eenet-inputs", "full"),
             expect=(p("compact"), "compact", "EENet", "full-score file")),
        _evaluate("compact_missing_class_count", p("compact_no_c"), expect=(p("compact_no_c"), "eenet.num_classes", "integer")),
        _evaluate("compact_class_outside", p("compact_bad_class"), expect=(p("compact_bad_class"), "exit_1.top_classes", "outside [0, 5)")),
    ]


CASES += _compact_cases()
_build_without_compact = build


def _compact_inputs(d: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from eenet_cli.artifacts.predictions import compact_predictions

    compact_predictions(d / "good.parquet", d / "compact.parquet", top_k=3)
    t = pq.read_table(d / "compact.parquet")
    meta = {k: v for k, v in t.schema.metadata.items() if k != b"eenet.num_classes"}
    pq.write_table(t.replace_schema_metadata(meta), d / "compact_no_c.parquet")
    col = t.column("exit_1").combine_chunks()
    children = col.flatten()
    cls = children[1].values.to_numpy().copy()
    cls[7] = 5
    children[1] = pa.FixedSizeListArray.from_arrays(pa.array(cls), children[1].type.list_size)
    bad = pa.StructArray.from_arrays(children, fields=list(col.type))
    pq.write_table(t.set_column(t.schema.get_field_index("exit_1"), t.schema.field("exit_1"), bad), d / "compact_bad_class.parquet")


def build(root: Path, cases: list[Case] = CASES) -> None:  # noqa: F811 - the base corpus, then the compact inputs
    _build_without_compact(root, cases)
    _compact_inputs(root / "in")


# --------------------------------------------------------------------------- dump --keep and streamed part folders (issue 20)

def _keep_cases() -> list[Case]:
    return [
        _dump("dump_keep_unknown", "digits-cnn", "--keep", "top3", expect=("--keep", "full or top-k:K", "'top3'")),
        _dump("dump_keep_top_k_one", "digits-cnn", "--keep", "top-k:1", expect=("--keep", "at least 2")),
        _dump("dump_keep_top_k_above_classes", "digits-cnn", "--keep", "top-k:11", expect=("--keep", "more classes than the model has (10)")),
        _dump("dump_keep_with_fp16", "digits-cnn", "--keep", "top-k:3", "--fp16", expect=("--fp16", "drop --fp16")),
        _evaluate("evaluate_parts_compact_and_full", "in/mixed_parts", expect=("in/mixed_parts/part-00001.parquet", "compact", "full scores")),
    ]


CASES += _keep_cases()
_build_without_keep = build


def build(root: Path, cases: list[Case] = CASES) -> None:  # noqa: F811 - the corpus so far, then a folder of mixed parts
    _build_without_keep(root, cases)
    d = root / "in" / "mixed_parts"
    d.mkdir(parents=True, exist_ok=True)
    (d / "part-00000.parquet").write_bytes((root / "in" / "good.parquet").read_bytes())
    (d / "part-00001.parquet").write_bytes((root / "in" / "compact.parquet").read_bytes())
