import pytest

from crossmodal.errors import CrossmodalError
from crossmodal.lab.evaluation import EvalSet, pointing_game, recall_at, scene_set


def test_recall_at_k_counts_the_first_relevant_rank():
    assert recall_at([0, 1, 4, None, 9]) == {"R@1": 0.2, "R@5": 0.6, "R@10": 0.8}


def test_scene_sets_judge_relevance_by_attributes():
    single = scene_set("single", 30, "en")
    assert len(single.images) == 30 and all(q.startswith("a ") for q in single.queries)
    for q in range(30):
        assert single.is_relevant(q, q)  # every caption describes its own image
    relevant_counts = [sum(single.is_relevant(q, i) for i in range(30)) for q in range(30)]
    assert min(relevant_counts) >= 1
    zh = scene_set("single", 5, "zh")
    assert all("的" in q for q in zh.queries)
    with pytest.raises(CrossmodalError):
        scene_set("triple", 3)


def test_pointing_game_with_oracle_and_wrong_locators():
    eval_set = scene_set("double", 10, "en")

    def oracle(image, phrase):
        for objects, boxes in zip(eval_set.image_keys, eval_set.boxes):
            for obj, (x0, y0, x1, y1) in zip(objects, boxes):
                if phrase.endswith(obj.phrase("en", size=False)) and eval_set.images[eval_set.image_keys.index(objects)] is image:
                    return ((x0 + x1) / 2, (y0 + y1) / 2)
        raise AssertionError(phrase)

    assert pointing_game(eval_set, oracle) == {"objects": 20, "accuracy": 1.0}
    assert pointing_game(eval_set, lambda image, phrase: (-1, -1))["accuracy"] == 0.0


def test_empty_evaluation_set_is_a_clear_error(tiny_clip_dir, tmp_path):
    from crossmodal.lab.evaluation import evaluate_set, jsonl_set
    from crossmodal.service import Service
    from crossmodal.settings import Settings

    service = Service(Settings(data_dir=str(tmp_path), model=str(tiny_clip_dir)))
    with pytest.raises(CrossmodalError, match="no pairs"):
        evaluate_set(service, EvalSet("empty", [], [], [], lambda q, i: False), str(tiny_clip_dir))
    (tmp_path / "pairs.jsonl").write_text('{"image": "missing.png", "caption": "x"}\n')
    with pytest.raises(CrossmodalError, match="no \\(image, caption\\) pairs"):
        jsonl_set(str(tmp_path / "pairs.jsonl"))
