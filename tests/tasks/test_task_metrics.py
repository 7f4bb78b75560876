import pytest

from tasks import accuracy, mean_f1, normalize_answer, squad_f1


@pytest.mark.parametrize("text, expected", [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  an  apple,   a pear ", "apple pear"),
    ("Theory of the atom", "theory of atom"),  # only whole-word articles go
    ("U.S.A.", "usa"),
    ("A", ""),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_squad_f1_cases():
    assert squad_f1("the Eiffel Tower", ["Eiffel tower."]) == 1.0
    assert squad_f1("Paris France", "Paris") == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert squad_f1("Paris", ["London", "in Paris"]) == pytest.approx(2 * 1.0 * 0.5 / 1.5)  # max over golds
    assert squad_f1("", ["Paris"]) == 0.0
    assert squad_f1("nothing here", ["CANNOTANSWER"]) == 0.0  # exact match mode
    assert squad_f1("cannotanswer", ["CANNOTANSWER", "x"]) == 1.0
    assert squad_f1("No answer.", ["no answer"]) == 1.0
    with pytest.raises(ValueError):
        squad_f1("x", [])


def test_accuracy_with_list_gold():
    assert accuracy(["a", "b", "c"], ["a", "x", ["c", "d"]]) == pytest.approx(2 / 3)
    assert accuracy(["e"], [["c", "d"]]) == 0.0
    assert accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        accuracy(["a"], [])


def test_mean_f1():
    assert mean_f1(["Paris", "x"], [["Paris"], ["y"]]) == 0.5
