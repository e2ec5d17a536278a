"""
The joblib backend "dispycos" (dispycos.joblib), driven by scikit-learn's
own n_jobs machinery from a plain script against a real LocalCluster: the
same scores as n_jobs=1 in the client, and proof (the PIDs the fits ran in)
that the fits ran in the cluster's server processes.
"""

import json

import pytest

from .blocking_helpers import Workdir
from .test_blocking import assert_clean

pytest.importorskip("joblib")
pytest.importorskip("sklearn")


@pytest.fixture
def workdir():
    w = Workdir()
    yield w
    w.cleanup()


SKLEARN_SCRIPT = """
import json, os
import joblib
import psutil
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score, cross_validate

import dispycos.joblib
from dispycos.blocking import Computation, LocalCluster

class PidLogistic(LogisticRegression):
    '''A logistic regression that records the process its fit ran in.'''

    def fit(self, X, y, sample_weight=None):
        super().fit(X, y, sample_weight)
        self.fit_pid_ = os.getpid()
        return self

def getpid():
    return os.getpid()

def square(n):
    return n * n

def fails(n):
    if n == 3:
        raise ValueError("bad %d" % n)
    return n

X, y = load_iris(return_X_y=True)
model = PidLogistic(max_iter=1000)
local_scores = cross_val_score(model, X, y, cv=4, n_jobs=1)
local_grid = GridSearchCV(model, {"C": [0.1, 1.0, 10.0]}, cv=3, n_jobs=1).fit(X, y)

out = {}
with LocalCluster(cpus=2), Computation([getpid]) as comp:
    servers = comp.servers()
    server_pids = {comp.run_result_at(s, getpid) for s in servers}
    with joblib.parallel_config(backend="dispycos", computation=comp):
        scores = cross_val_score(model, X, y, cv=4, n_jobs=2)
        out["same_scores"] = scores.tolist() == local_scores.tolist()
        fitted = cross_validate(model, X, y, cv=4, n_jobs=-1, return_estimator=True)
        pids = {e.fit_pid_ for e in fitted["estimator"]}
        out["fits_in_servers"] = bool(pids) and pids <= server_pids
        out["n_jobs_all"] = joblib.Parallel(n_jobs=-1)._effective_n_jobs() == len(servers)
        grid = GridSearchCV(model, {"C": [0.1, 1.0, 10.0]}, cv=3, n_jobs=-1).fit(X, y)
        out["grid"] = [grid.best_params_ == local_grid.best_params_,
                       grid.cv_results_["mean_test_score"].tolist() == local_grid.cv_results_["mean_test_score"].tolist(),
                       grid.best_estimator_.fit_pid_ == os.getpid()]   # the refit is in the client (n_jobs ends there)
        out["parallel"] = joblib.Parallel(n_jobs=2)(joblib.delayed(square)(i) for i in range(20))
        try:
            joblib.Parallel(n_jobs=2)(joblib.delayed(fails)(i) for i in range(5))
        except ValueError as e:
            out["error"] = str(e)
    with joblib.parallel_backend("dispycos", computation=comp):           # the older form
        scores = cross_val_score(model, X, y, cv=4, n_jobs=2)
        out["parallel_backend"] = scores.tolist() == local_scores.tolist()
    out["still_usable"] = comp.run_result(getpid) in server_pids

# Without computation=: a LocalCluster of all CPUs for the block.
with joblib.parallel_config(backend="dispycos"):
    fitted = cross_validate(model, X, y, cv=4, n_jobs=-1, return_estimator=True)
    out["own_cluster_scores"] = fitted["test_score"].tolist() == local_scores.tolist()
    pids = {e.fit_pid_ for e in fitted["estimator"]}
    children = psutil.Process().children()          # the cluster's node; the fits ran in its servers
    # (its servers are its descendants: forked by its zygote, or spawned by it with --no_fork)
    out["own_cluster_pids"] = len(children) == 1 and bool(pids) and pids <= {
        c.pid for c in children[0].children(recursive=True)}
out["own_cluster_stopped"] = [c.pid for c in psutil.Process().children() if c.status() != psutil.STATUS_ZOMBIE]
print(json.dumps(out, sort_keys=True))
"""


def test_scikit_learn_through_the_joblib_backend(workdir):
    rc, out = workdir.run(SKLEARN_SCRIPT, timeout=400)
    assert rc == 0, out
    got = json.loads(out.splitlines()[-1])
    assert got == {
        "same_scores": True, "fits_in_servers": True, "n_jobs_all": True, "grid": [True, True, True],
        "parallel": [i * i for i in range(20)], "error": "bad 3", "parallel_backend": True, "still_usable": True,
        "own_cluster_scores": True, "own_cluster_pids": True, "own_cluster_stopped": [],
    }, out
    assert_clean(workdir)
