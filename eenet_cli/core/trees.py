"""Binary gradient-boosted trees as plain arrays, fitted with scikit-learn, applied with numpy.

A *forest* is the JSON object

    {"baseline": b,                      # raw score before any tree
     "roots": [T ints],                  # node index of each tree's root
     "feature": [M ints],                # split feature of each node (-1 at a leaf)
     "threshold": [M floats],            # numeric split: go left iff x <= threshold
     "missing_left": [M 0/1],            # where NaN (and unseen categories) go
     "left": [M ints], "right": [M ints],  # children (-1 at a leaf), always after their node
     "value": [M floats],                # leaf values (0 at inner nodes)
     "categorical": [[node, [categories going left]], ...]}   # categorical splits

and its raw score (log-odds) for a row x is ``b + sum_t value[leaf_t(x)]``, summed tree by
tree in order, as scikit-learn's ``HistGradientBoostingClassifier.decision_function`` sums
them, so the two agree to the last bit on the same float64 inputs. Evaluation is
vectorised over rows and trees: one gather per level of depth (:class:`Forest`).

scikit-learn is needed only to *fit* (:func:`fit_forest`, imported lazily); applying a
forest needs numpy alone.
"""

from __future__ import annotations

import math

import numpy as np

MAX_TREES = 1000  # per forest
MAX_NODES = 200_000  # per forest, all trees together
MAX_DEPTH = 64
MAX_CATEGORIES = 256  # scikit-learn's categorical splits take category codes below 256
_ALL_NODES = 1 << 16  # rows x nodes at or below which every node's branch is decided up front


class Forest:
    """One or more validated forests, concatenated and prepared for vectorised evaluation:
    :meth:`raw` gives one column per forest, all trees descended together."""

    __slots__ = ("baselines", "roots", "feature", "threshold", "missing_left", "left", "right", "value",
                 "depth", "cat_row", "cat_table", "cat_nodes", "num_trees", "bounds")

    def __init__(self, forests: dict | list[dict], num_categories: int = MAX_CATEGORIES):
        forests = [forests] if isinstance(forests, dict) else list(forests)
        roots, feat, thr, ml, left, right, val, cats, bounds = [], [], [], [], [], [], [], [], [0]
        offset = 0
        for f in forests:
            fe = np.asarray(f["feature"], dtype=np.int64)
            roots.append(np.asarray(f["roots"], dtype=np.int64) + offset)
            feat.append(fe)
            thr.append(np.asarray(f["threshold"], dtype=np.float64))
            ml.append(np.asarray(f["missing_left"], dtype=bool))
            left.append(np.where(fe < 0, -1, np.asarray(f["left"], dtype=np.int64) + offset))
            right.append(np.where(fe < 0, -1, np.asarray(f["right"], dtype=np.int64) + offset))
            val.append(np.asarray(f["value"], dtype=np.float64))
            cats += [(int(node) + offset, going) for node, going in (f.get("categorical") or [])]
            bounds.append(bounds[-1] + len(f["roots"]))
            offset += fe.size
        cat_ = (lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dtype=dt))
        feat_all = cat_(feat, np.int64)
        leaf = feat_all < 0
        m = feat_all.size
        idx = np.arange(m)
        self.baselines = np.asarray([float(f["baseline"]) for f in forests], dtype=np.float64)
        self.bounds = bounds
        self.roots = cat_(roots, np.int64)
        self.num_trees = int(self.roots.size)
        self.feature = np.where(leaf, 0, feat_all)
        self.threshold = cat_(thr, np.float64)
        self.missing_left = cat_(ml, bool)
        # leaves point to themselves, so extra levels of descent leave them where they are
        self.left = np.where(leaf, idx, cat_(left, np.int64))
        self.right = np.where(leaf, idx, cat_(right, np.int64))
        self.value = cat_(val, np.float64)
        self.depth = _depth(self.roots, self.left, self.right, leaf)
        self.cat_row = np.full(m, -1, dtype=np.int64)
        # one row per categorical node: does category c go left? (+1 column: out of range -> missing)
        table = np.zeros((len(cats), num_categories + 1), dtype=bool)
        for r, (node, going_left) in enumerate(cats):
            self.cat_row[node] = r
            table[r, np.asarray(going_left, dtype=np.int64)] = True
            table[r, num_categories] = self.missing_left[node]
        self.cat_table = table
        self.cat_nodes = np.asarray([node for node, _ in cats], dtype=np.int64)  # row r of the table is node cat_nodes[r]

    def raw(self, x: np.ndarray, category: np.ndarray | None = None) -> np.ndarray:
        """``[N, G]`` float64 raw scores (one column per forest) of rows ``x`` ``[N, D]``;
        ``category`` ``[N]`` (int) is the value of the categorical feature."""
        n = x.shape[0]
        g = len(self.bounds) - 1
        if self.num_trees == 0:
            return np.broadcast_to(self.baselines, (n, g)).copy()
        rows = np.arange(n)[:, None]
        has_nan = bool(np.isnan(x).any())
        has_cat = self.cat_table.shape[0] > 0
        if has_cat:
            width = self.cat_table.shape[1] - 1
            cat = np.asarray(category, dtype=np.int64)
            cat = np.where((cat >= 0) & (cat < width), cat, width)
        m = self.feature.size
        if n * m <= _ALL_NODES:
            # few rows (the online path): every node's branch decided at once, then the descent
            # is one gather per level; the same comparisons as below, so the same leaves
            v = x[:, self.feature]
            go = v <= self.threshold
            if has_nan:
                go = np.where(np.isnan(v), self.missing_left, go)
            if has_cat:
                go[:, self.cat_nodes] = self.cat_table[:, cat].T
            nxt = np.where(go, self.left, self.right)
            node = nxt[:, self.roots]
            for _ in range(self.depth - 1):
                node = nxt[rows, node]
        else:
            node = np.broadcast_to(self.roots, (n, self.num_trees)).copy()
            if has_cat:
                cat = np.broadcast_to(cat[:, None], node.shape)
            for _ in range(self.depth):
                v = x[rows, self.feature[node]]
                go = v <= self.threshold[node]
                if has_nan:
                    go = np.where(np.isnan(v), self.missing_left[node], go)
                if has_cat:
                    r = self.cat_row[node]
                    go = np.where(r >= 0, self.cat_table[np.maximum(r, 0), cat], go)
                node = np.where(go, self.left[node], self.right[node])
        leaves = self.value[node]
        if n == 1:  # one row: the same sequential float64 sums, without the array calls
            vals = leaves[0].tolist()
            sums = []
            for i in range(g):
                total = float(self.baselines[i])
                for v in vals[self.bounds[i] : self.bounds[i + 1]]:
                    total += v
                sums.append(total)
            return np.array([sums])
        out = np.empty((n, g))
        part = np.empty((n, self.num_trees + g))
        for i in range(g):
            a, b = self.bounds[i], self.bounds[i + 1]
            # the baseline first, then tree by tree, as scikit-learn accumulates them
            seg = part[:, a + i : b + i + 1]
            seg[:, 0] = self.baselines[i]
            seg[:, 1:] = leaves[:, a:b]
            out[:, i] = np.cumsum(seg, axis=1)[:, -1]
        return out


def _depth(roots: np.ndarray, left: np.ndarray, right: np.ndarray, leaf: np.ndarray) -> int:
    """Levels of descent that bring every root to a leaf (children come after parents)."""
    if leaf.size == 0:
        return 0
    depth = np.zeros(leaf.size, dtype=np.int64)
    # children always have larger indices than their parent, so one ordered pass suffices
    for i in np.flatnonzero(~leaf):
        d = depth[i] + 1
        depth[left[i]] = max(depth[left[i]], d)
        depth[right[i]] = max(depth[right[i]], d)
    return int(depth.max())


def validate_forest(forest, num_features: int, what: str, categorical_feature: int | None = None,
                    num_categories: int = 0) -> str | None:
    """An error message for a malformed forest (user input), else None."""
    if not isinstance(forest, dict):
        return f"{what} must be an object"
    b = forest.get("baseline")
    if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b):
        return f"{what}.baseline must be a finite number"
    arrays = {}
    for key, kind in (("roots", "int"), ("feature", "int"), ("left", "int"), ("right", "int"),
                      ("threshold", "float"), ("value", "float"), ("missing_left", "int")):
        v = forest.get(key)
        if not isinstance(v, list):
            return f"{what}.{key} must be a list"
        if any(isinstance(e, bool) or not isinstance(e, (int, float)) for e in v):
            return f"{what}.{key} must hold numbers"
        if kind == "int" and any(isinstance(e, float) and not e.is_integer() for e in v):
            return f"{what}.{key} must hold integers"
        arr = np.asarray(v, dtype=np.float64) if v else np.zeros(0)
        if not np.all(np.isfinite(arr)):
            return f"{what}.{key} holds a non-finite number"
        arrays[key] = arr
    m = arrays["feature"].size
    t = arrays["roots"].size
    if t > MAX_TREES or m > MAX_NODES:
        return f"{what} has {t} trees and {m} nodes; at most {MAX_TREES} and {MAX_NODES} are allowed"
    for key in ("left", "right", "threshold", "value", "missing_left"):
        if arrays[key].size != m:
            return f"{what}.{key} must have {m} entries, one per node"
    if np.any(np.abs(arrays["value"]) > 1e6) or np.any(np.abs(arrays["threshold"]) > 1e300):
        return f"{what} holds values out of range"
    feat = arrays["feature"].astype(np.int64)
    left = arrays["left"].astype(np.int64)
    right = arrays["right"].astype(np.int64)
    roots = arrays["roots"].astype(np.int64)
    if not np.isin(arrays["missing_left"], (0, 1)).all():
        return f"{what}.missing_left must hold 0 or 1"
    leaf = feat < 0
    if np.any(feat < -1) or np.any(feat >= num_features):
        return f"{what}.feature must be -1 (a leaf) or a feature index below {num_features}"
    if np.any(leaf & ((left != -1) | (right != -1))):
        return f"{what}: a leaf (feature -1) must have left and right -1"
    idx = np.arange(m)
    inner = ~leaf
    if np.any(inner & ((left <= idx) | (right <= idx) | (left >= m) | (right >= m))):
        return f"{what}: every child must come after its node and be a node index below {m}"
    if t and (np.any(roots < 0) or np.any(roots >= m) or np.any(np.diff(roots) <= 0) or roots[0] != 0):
        return f"{what}.roots must start at 0 and increase strictly, below {m}"
    # every node belongs to exactly one tree: children stay inside their tree's range
    end = np.append(roots[1:], m) if t else np.zeros(0, dtype=np.int64)
    tree_of = np.searchsorted(roots, idx, side="right") - 1 if t else np.zeros(m, dtype=np.int64)
    if t and np.any(inner & ((left >= end[tree_of]) | (right >= end[tree_of]))):
        return f"{what}: a child lies outside its tree"
    if not t and m:
        return f"{what}: nodes without trees"
    if m:
        parents = np.bincount(np.concatenate([left[inner], right[inner]]), minlength=m)
        if np.any(parents[roots] != 0) or np.any(np.delete(parents, roots) != 1):
            return f"{what}: every node but a root must have exactly one parent"
        if _depth(roots, np.where(leaf, idx, left), np.where(leaf, idx, right), leaf) > MAX_DEPTH:
            return f"{what}: trees deeper than {MAX_DEPTH}"
    cats = forest.get("categorical", [])
    if not isinstance(cats, list):
        return f"{what}.categorical must be a list"
    seen = set()
    for i, entry in enumerate(cats):
        w = f"{what}.categorical[{i}]"
        if (not isinstance(entry, list) or len(entry) != 2 or isinstance(entry[0], bool) or not isinstance(entry[0], int)
                or not isinstance(entry[1], list)):
            return f"{w} must be [node, [categories going left]]"
        node, going = entry
        if not 0 <= node < m or leaf[node] or node in seen:
            return f"{w}: node {node} is not a split node, or is listed twice"
        if categorical_feature is None or feat[node] != categorical_feature:
            return f"{w}: node {node} does not split on the categorical feature"
        if any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < max(num_categories, 0) for c in going):
            return f"{w}: categories must be integers in [0, {num_categories})"
        seen.add(node)
    if categorical_feature is not None:
        numeric_on_cat = inner & (feat == categorical_feature)
        if any(int(i) not in seen for i in np.flatnonzero(numeric_on_cat)):
            return f"{what}: a split on the categorical feature has no category list"
    return None


# --------------------------------------------------------------------------- fitting (scikit-learn)


def export_forest(model) -> dict:
    """A fitted binary ``HistGradientBoostingClassifier`` as a forest (see module docstring)."""
    predictors = [p[0] for p in model._predictors]
    known = getattr(model._bin_mapper, "known_categories", None) or []
    roots, feature, threshold, mleft, left, right, value, categorical = [], [], [], [], [], [], [], []
    offset = 0
    for pred in predictors:
        nodes = pred.nodes
        roots.append(offset)
        for i, nd in enumerate(nodes):
            if nd["is_leaf"]:
                feature.append(-1)
                threshold.append(0.0)
                left.append(-1)
                right.append(-1)
                value.append(float(nd["value"]))
            else:
                f = int(nd["feature_idx"])
                feature.append(f)
                threshold.append(float(nd["num_threshold"]) if not nd["is_categorical"] else 0.0)
                left.append(offset + int(nd["left"]))
                right.append(offset + int(nd["right"]))
                value.append(0.0)
                if nd["is_categorical"]:
                    bits = pred.raw_left_cat_bitsets[int(nd["bitset_idx"])]
                    known_cats = known[f] if f < len(known) and known[f] is not None else np.zeros(0)
                    going = []
                    for c in range(MAX_CATEGORIES):
                        in_left = (int(bits[c >> 5]) >> (c & 31)) & 1
                        is_known = bool(np.any(np.asarray(known_cats) == c))
                        if in_left or (not is_known and nd["missing_go_to_left"]):
                            going.append(c)
                    categorical.append([offset + i, going])
            mleft.append(int(bool(nd["missing_go_to_left"])))
        offset += len(nodes)
    base = np.asarray(model._baseline_prediction, dtype=np.float64).ravel()
    return {
        "baseline": float(base[0]),
        "roots": roots,
        "feature": feature,
        "threshold": threshold,
        "missing_left": mleft,
        "left": left,
        "right": right,
        "value": value,
        "categorical": categorical,
    }


def trim_categories(forest: dict, num_categories: int) -> dict:
    """Category lists cut to the codes that can occur (below ``num_categories``)."""
    forest["categorical"] = [[node, [c for c in going if c < num_categories]] for node, going in forest["categorical"]]
    return forest


TREE_SETTINGS = {
    "learning_rate": 0.1,
    "max_leaf_nodes": 8,
    "max_depth": 4,
    "min_samples_leaf": 40,
    "l2_regularization": 1.0,
    "max_bins": 255,
}


def fit_forest(x: np.ndarray, y: np.ndarray, *, iterations: int, categorical: int | None, seed: int):
    """A fitted ``HistGradientBoostingClassifier`` (scikit-learn, imported here only)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    cat = None
    if categorical is not None:
        cat = np.zeros(x.shape[1], dtype=bool)
        cat[categorical] = True
    model = HistGradientBoostingClassifier(max_iter=int(iterations), early_stopping=False, categorical_features=cat,
                                           random_state=int(seed), **TREE_SETTINGS)
    with _one_thread():
        model.fit(x, y.astype(np.int64))
    return model


def _one_thread():
    """OpenMP on one thread: these fits are small, and on a busy machine OpenMP's threads wait
    for each other (measured: 0.2 s on one thread, 1-2 s on two, for 4,000 rows x 100 trees)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def staged_raw(model, x: np.ndarray, stages: list[int]) -> dict[int, np.ndarray]:
    """Raw scores after each number of trees in ``stages`` (scikit-learn's staged scores)."""
    want = set(stages)
    out = {}
    with _one_thread():
        for i, z in enumerate(model.staged_decision_function(x), start=1):
            if i in want:
                out[i] = np.asarray(z, dtype=np.float64).ravel()
    last = max(out) if out else 0
    for s in stages:  # fewer trees than asked for (a constant target): the last stage stands in
        if s not in out:
            out[s] = out[last] if last else np.asarray(model.decision_function(x), dtype=np.float64).ravel()
    return out
