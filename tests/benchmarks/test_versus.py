"""`python -m benchmarks.versus`'s report: medians of the rounds, the ratio this tree's (the
median of the rounds' ratios, with their range)."""

from benchmarks.versus import WORKLOADS, report


def test_the_report_gives_each_workloads_median_rounds_and_their_ratio() -> None:
    names = ("this tree (abc1234)", "0168c04")
    results = {}
    for workload in WORKLOADS:
        # (req/s, CPU µs a request, p99 ms, errors) a round
        results[workload, names[0]] = [(800.0, 120.0, 3.0, 0), (900.0, 110.0, 2.0, 1)]
        results[workload, names[0]].append((700.0, 130.0, 4.0, 0))
        results[workload, names[1]] = [(800.0, 100.0, 2.0, 0), (1000.0, 100.0, 2.0, 0)]
        results[workload, names[1]].append((1400.0, 100.0, 2.0, 0))
    text = report(results, names, "python -m benchmarks.versus --revision 0168c04")
    rows = [line for line in text.splitlines() if line.startswith("| distinct single rows")]
    # rounds' ratios 1.00, 0.90, 0.50: their median, not the medians' ratio (800 / 1,000)
    expected = (
        "| distinct single rows | 1,000 | 800 | **0.90** | 0.50 to 1.00 | 100 | 120 | 2.00 "
        "| 3.00 | 1 |"
    )
    # the revision first, then this tree: req/s, ratio, CPU, p99, the errors of both
    assert rows == [expected]
    assert "- repeated single row, this tree (abc1234): 800, 900, 700" in text
