"""Where people look: a study's experiment is of kind ``custom_model_development`` (tag
``mlflow.experimentKind``), one created before the tag gets it when the mirror next opens it,
and ``paretoedge ui`` links each experiment on its runs table (``workflowType``)."""

from __future__ import annotations

from pathlib import Path

from search.tracking.mlflow_store import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    MlflowStore,
    tracking_uri,
)


def test_study_experiments_are_tagged_as_model_development(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from search.cli.ui_command import experiment_links

    store = MlflowStore.open(tmp_path, "fresh")
    client = MlflowClient(tracking_uri=tracking_uri(tmp_path))
    assert client.get_experiment(store.experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    # an experiment from before the tag (or a user's own) is tagged when the mirror opens it
    old = client.create_experiment("paretoedge/old")
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    MlflowStore.open(tmp_path, "old", create=False)  # reading does not write
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    MlflowStore.open(tmp_path, "old")
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    links = dict(experiment_links(tmp_path, "http://127.0.0.1:5000"))
    assert links == {
        "paretoedge/fresh": f"http://127.0.0.1:5000/#/experiments/{store.experiment_id}"
                            f"?workflowType=machine_learning",
        "paretoedge/old": f"http://127.0.0.1:5000/#/experiments/{old}"
                          f"?workflowType=machine_learning"}
