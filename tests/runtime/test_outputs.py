"""Run outputs: the plots' colours."""

from prelort.runtime.outputs import method_colors


def test_a_comparison_of_many_methods_gets_a_distinct_colour_per_method():
    for count in (3, 10, 14, 20):
        colors = method_colors([f"m{i}" for i in range(count)])
        assert len(set(colors.values())) == count
