"""The golden comparison (scripts/update_golden.py) lets last-bit noise through and nothing else.

No fits here: golden files are compared with edited copies of themselves, and policies
are applied to the sample data with numpy.
"""

import copy
import json
import sys

import numpy as np
import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import update_golden as ug  # noqa: E402

CROSS = ROOT / "tests" / "golden" / "cross_cpu"
POLICIES = sorted(n for n in ug.RUNS if ug.decisions_name(n))


def _load(name: str) -> dict:
    return json.loads((ug.GOLDEN / name).read_text())


def _floats(doc, path=""):
    """(path, container, key) of every float in a JSON document."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    for key, v in items:
        sub = f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]"
        if isinstance(v, float):
            yield sub.lstrip("."), doc, key
        else:
            yield from _floats(v, sub)


def _nudged(doc: dict, direction: float) -> tuple[dict, int]:
    out = copy.deepcopy(doc)
    count = 0
    for _, parent, key in list(_floats(out)):
        parent[key] = float(np.nextafter(parent[key], direction))
        count += 1
    return out, count


@pytest.mark.parametrize("direction", [np.inf, -np.inf], ids=["up", "down"])
@pytest.mark.parametrize("name", sorted(ug.RUNS))
def test_every_float_one_ulp_off_still_matches(name, direction):
    text = (ug.GOLDEN / name).read_text()
    want, count = _nudged(json.loads(text), direction)
    assert count > 10
    assert ug.check(name, text, json.dumps(want)) == []


def test_the_float_from_the_issue_one_ulp_off_matches_and_a_real_change_is_named():
    text = (ug.GOLDEN / "digits_policy_eenet.json").read_text()
    want = json.loads(text)
    v = want["training"]["learned_distribution"][2]
    want["training"]["learned_distribution"][2] = float(np.nextafter(v, 1.0))
    assert ug.check("digits_policy_eenet.json", text, json.dumps(want)) == []
    want["training"]["learned_distribution"][2] = v * (1 + 1e-4)
    problems = ug.check("digits_policy_eenet.json", text, json.dumps(want))
    assert len(problems) == 1, problems
    assert problems[0].startswith("training.learned_distribution[2]: ")
    assert "in the golden file" in problems[0] and "rel diff 1.00e-04 > " in problems[0], problems[0]


def test_structure_and_exact_fields_are_named():
    want = _load("digits_policy_maxprob.json")
    got = copy.deepcopy(want)
    del got["threshold_fit"]["q"]
    got["validation"]["n"] = 451
    got["scorer"]["type"] = "entropy"
    got["num_exits"] = 4.0  # an integer that became a float
    got["costs"]["costs"].append(2.0)
    got["new_key"] = 1
    problems = "\n".join(ug.compare(got, want))
    for needle in ("threshold_fit: keys missing now: ['q']", "validation.n: 450 in the golden file, 451 now",
                   "scorer.type: 'maxprob' in the golden file, 'entropy' now", "num_exits: 4 in the golden file, 4.0 now",
                   "costs.costs: 4 items in the golden file, 5 now", "<top>: keys not in the golden file: ['new_key']"):
        assert needle in problems, problems


def test_shares_of_samples_are_compared_as_counts():
    want = _load("digits_policy_maxprob.json")
    got = copy.deepcopy(want)
    n = want["validation"]["n"]
    got["validation"]["accuracy"] = (round(want["validation"]["accuracy"] * n) + 1) / n
    got["exit_distribution"][1] = float(np.nextafter(want["exit_distribution"][1], 0.0))  # noise: same count
    problems = ug.compare(got, want)
    assert problems == [f"validation.accuracy: {round(want['validation']['accuracy'] * n)}/{n} samples in the golden "
                        f"file, {round(want['validation']['accuracy'] * n) + 1}/{n} now"]


def _one_sample_moved(policy: dict) -> tuple[dict, int]:
    """A copy of ``policy`` whose exit-1 threshold is raised past exactly one sample's score."""
    from eenet_cli.core.policy import apply_to_features, compute_scores

    feats = ug._sample_data().features()
    scores = compute_scores(policy["scorer"], feats)
    exits = apply_to_features(policy, feats).exits
    for j in range(policy["num_exits"] - 1):
        here = np.flatnonzero(exits == j)
        if here.size < 2:
            continue
        s = scores[here, j]
        order = np.argsort(s, kind="stable")
        if s[order[0]] < s[order[1]]:  # a single lowest score: raising the threshold past it moves that sample only
            moved = copy.deepcopy(policy)
            moved["thresholds"][j] = float(np.nextafter(s[order[0]], np.inf))
            return moved, int(here[order[0]])
    raise AssertionError("no exit with a unique lowest score")


@pytest.mark.parametrize("name", POLICIES)
def test_a_threshold_that_moves_one_sample_fails_naming_it(name):
    text = (ug.GOLDEN / name).read_text()
    moved, row = _one_sample_moved(json.loads(text))
    problems = ug.check(name, json.dumps(moved), text)
    sid = ug._sample_data().sample_id[row]
    assert len(problems) == 1, problems  # the threshold itself may be within tolerance; the decision is not
    assert problems[0].startswith(f"sample_id {sid} (row {row}, "), problems
    assert "exit 1 -> " in problems[0]


@pytest.mark.parametrize("name", POLICIES)
def test_one_changed_decision_fails_naming_the_sample(name):
    text = (ug.GOLDEN / name).read_text()
    want = json.loads((ug.GOLDEN / ug.decisions_name(name)).read_text())
    assert ug.check(name, text, text, want) == []
    k = json.loads(text)["num_exits"]
    changed = copy.deepcopy(want)
    changed["exit"][17] = (changed["exit"][17] + 1) % k
    problems = ug.check(name, text, text, changed)
    assert problems == [
        f"sample_id {want['sample_id'][17]} (row 17, {want['split'][17]}): exit {changed['exit'][17] + 1} -> "
        f"{want['exit'][17] + 1}, prediction {want['prediction'][17]} -> {want['prediction'][17]} (exits numbered from 1)"
    ]
    changed = copy.deepcopy(want)
    changed["prediction"][3] = (changed["prediction"][3] + 1) % 10
    assert len(ug.check(name, text, text, changed)) == 1


def test_results_counts_exact_for_numpy_methods_within_a_few_samples_for_eenet():
    want = _load("digits_results.json")
    recs = want["results"]
    i = next(i for i, r in enumerate(recs) if r["method"] == "maxprob")
    e = next(i for i, r in enumerate(recs) if r["method"] == "eenet")
    n = recs[i]["n"]

    def with_accuracy(idx, samples):
        got = copy.deepcopy(want)
        got["results"][idx]["accuracy"] = (round(recs[idx]["accuracy"] * n) + samples) / n
        return ug.compare(got, want)

    assert with_accuracy(i, 0) == []
    assert with_accuracy(i, 1) == [
        f"results[{i}].accuracy: {round(recs[i]['accuracy'] * n)}/{n} samples in the golden file, "
        f"{round(recs[i]['accuracy'] * n) + 1}/{n} now"
    ]
    assert with_accuracy(e, 1) == []  # torch-trained: a few samples of CPU noise allowed
    slack = int(ug.TRAINED_SHARE * n)
    problems = with_accuracy(e, slack + 1)
    assert len(problems) == 1 and problems[0].startswith(f"results[{e}].accuracy: ") and "torch-trained" in problems[0]
    got = copy.deepcopy(want)
    got["results"][i]["avg_cost"] *= 1 + 1e-4
    assert [p.split(":")[0] for p in ug.compare(got, want)] == [f"results[{i}].avg_cost"]


@pytest.mark.parametrize("kind", ["policy_eenet", "results"])
def test_outputs_of_two_cpus_match_each_other(kind):
    """Real outputs of the same commands on two CPUs (tests/golden/cross_cpu/README.md) pass the comparison."""
    a = json.loads((CROSS / f"machine_a_{kind}.json").read_text())
    b = json.loads((CROSS / f"machine_b_{kind}.json").read_text())
    assert a != b  # they do differ
    assert ug.compare(a, b) == [] and ug.compare(b, a) == []
    if kind == "policy_eenet":
        assert ug.compare_decisions(ug.decisions(a), ug.decisions(b)) == []
