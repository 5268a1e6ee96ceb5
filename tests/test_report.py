"""``ctpreg report`` from a registry with known evidence: the figures shown are exactly those recorded, one series per
method, collapsed targets marked without setting the scale, windows never mixed, the training target included."""

import json
import math
from pathlib import Path

import pytest
from ctpreg.cli.main import main
from ctpreg.registry import EvalData, Registry, Settings
from ctpreg.registry.compression import parse_compression
from ctpreg.registry.matcher import Target
from ctpreg.registry.records import Measurement
from ctpreg.registry.recovery import COLLAPSE_RATIO, collapsed, gap_recovered, log_gap_recovered
from ctpreg.registry.report import summarize
from helpers import artifact_bytes

WIKI = EvalData(corpus="wiki", split="validation", seq_len=256, windows=20, token_digest="ab" * 32)
NEWS = EvalData(corpus="news", split="validation", seq_len=256, windows=20, token_digest="cd" * 32)
KEY = "compressed:" + "ee" * 32
# target -> (ppl_full recorded, compressed, prompted, accepted) on WIKI; gptq-w3-g128 is the prompt's training target
ON_WIKI = {
    "gptq-w4-g128": (20.0, 30.0, 25.0, True),
    "gptq-w2-g128": (20.0, 5000.0, 4000.0, True),
    "bnb-nf4": (20.0, 28.0, 24.0, True),
    "sparsegpt-s50": (20.0, 45.0, 44.9, False),
    "wanda-s50": (20.0, 50.0, 40.0, True),
}
TRAINED = {"ppl_full": 20.0, "ppl_compressed": 60.0, "ppl_prompted": 35.0, "eval_data": WIKI.to_dict()}


def _populate(registry: Registry, dataset: str = "wiki") -> None:
    trained = registry.publish_bytes(
        artifact_bytes(seed=1, compression="gptq-w3-g128", metrics=TRAINED, dataset=dataset), name="p"
    ).prompt
    for target, (full, without, with_, accepted) in ON_WIKI.items():
        measurement = Measurement(without, with_, WIKI.label, 5120, target_key=KEY, eval_data=WIKI, ppl_full=full)
        registry.record_evidence(Target.for_spec("tiny-llama", parse_compression(target)), trained, measurement,
                                 accepted=accepted)
    on_news = Measurement(31.0, 29.0, NEWS.label, 5120, target_key=KEY, eval_data=NEWS, ppl_full=21.0)
    registry.record_evidence(Target.for_spec("tiny-llama", parse_compression("gptq-w4-g128")), trained, on_news,
                             accepted=True)


def test_points_are_exactly_the_recorded_figures(registry: Registry) -> None:
    _populate(registry)
    [evidence] = [e for e in registry.evidence("tiny-llama") if e.measurement.eval_data == NEWS]
    assert evidence.measurement.ppl_full == 21.0, "the full model's figure survives the DB (both backends)"
    points = summarize("tiny-llama", registry.evidence("tiny-llama"), registry.list_prompts(model="tiny-llama"))
    got = {(p.target, p.eval_key): (p.ppl_full, p.ppl_compressed, p.ppl_prompted, p.served, p.source) for p in points}
    expected = {(t, WIKI.key): (f, c, w, a, "evidence") for t, (f, c, w, a) in ON_WIKI.items()}
    expected[("gptq-w3-g128", WIKI.key)] = (20.0, 60.0, 35.0, True, "artifact")
    expected[("gptq-w4-g128", NEWS.key)] = (21.0, 31.0, 29.0, True, "evidence")
    assert got == expected
    by_target = {(p.target, p.eval_key): p for p in points}
    trained = by_target[("gptq-w3-g128", WIKI.key)]
    assert trained.explanation.startswith("exact match gptq-w3-g128") and "chose its best step" in trained.explanation
    w4 = by_target[("gptq-w4-g128", WIKI.key)]
    assert w4.gap_recovered == pytest.approx(0.5)
    assert w4.log_gap_recovered == pytest.approx((math.log(30) - math.log(25)) / (math.log(30) - math.log(20)))
    assert w4.explanation.startswith("measured on this target")
    w2 = by_target[("gptq-w2-g128", WIKI.key)]
    assert w2.collapsed and w2.gap_recovered is None and w2.log_gap_recovered is None
    assert by_target[("sparsegpt-s50", WIKI.key)].explanation.startswith("none served")
    for series in {p.series for p in points}:  # a series is one method at several levels, never two methods
        methods = {(parse_compression(p.target).method, parse_compression(p.target).prune_method)
                   for p in points if p.series == series}
        assert len(methods) == 1, series


def test_recovery_in_both_spaces_and_the_collapse_flag() -> None:
    metrics = {"ppl_full": 10.0, "ppl_compressed": 40.0, "ppl_prompted": 20.0}
    assert gap_recovered(metrics) == pytest.approx(20 / 30)
    assert log_gap_recovered(metrics) == pytest.approx(math.log(2) / math.log(4))
    assert gap_recovered({**metrics, "ppl_compressed": 10.0}) is None, "no gap, nothing to recover"
    assert log_gap_recovered({**metrics, "ppl_full": -1.0}) is None
    assert collapsed(10.0, 10.0 * COLLAPSE_RATIO + 0.01) and not collapsed(10.0, 10.0 * COLLAPSE_RATIO)


def _figure(points):
    from ctpreg.registry.report_chart import figure

    return figure("tiny-llama", points)


def test_chart_draws_series_per_method_marks_collapse_and_keeps_windows_apart(registry: Registry) -> None:
    pytest.importorskip("matplotlib")
    _populate(registry)
    points = summarize("tiny-llama", registry.evidence("tiny-llama"), registry.list_prompts(model="tiny-llama"))
    chart = _figure(points)
    plots = [axis for axis in chart.axes if axis.lines]
    assert len(plots) == 3, "wiki: quantization and pruning panels; news: quantization only"
    for axis in plots:
        [windows] = {p.eval_windows for p in points if p.eval_windows in axis.get_title().replace("\n", " ")}
        mine = [p for p in points if p.eval_windows == windows]
        kinds = {"compressed": lambda p: True, "+ served prompt": lambda p: p.served,
                 "best prompt, not served": lambda p: not p.served}
        for line in axis.lines:
            series, _, kind = line.get_label().rpartition(": ")
            if kind not in kinds:
                continue
            members = {(p.x, p.ppl_compressed if kind == "compressed" else p.ppl_prompted)
                       for p in mine if p.series == series and not p.collapsed and kinds[kind](p)}
            assert set(zip(line.get_xdata(), line.get_ydata())) == members, line.get_label()
        labels = [line.get_label() for line in axis.lines]
        assert ("sparsegpt: best prompt, not served" in labels) == ("sparsegpt: compressed" in labels)
        assert "sparsegpt: + served prompt" not in labels, "a prompt that is not served is not drawn as served"
        full = {p.ppl_full for p in mine}
        assert any(list(line.get_ydata()) == [f, f] for line in axis.lines for f in full), "the uncompressed line"
        top = axis.get_ylim()[1]
        kept = [v for p in mine if not p.collapsed for v in (p.ppl_compressed, p.ppl_prompted)]
        assert max(kept) < top < 2 * max(kept), "collapsed points do not set the scale"
        for p in (p for p in mine if p.collapsed and axis.get_xlabel().startswith("bits")):
            assert any(list(line.get_ydata()) == [top] and line.get_marker() == "^" for line in axis.lines)
            assert any(f"{p.target} collapsed" in t.get_text() for t in axis.texts)
    titles = [axis.get_title() for axis in plots]
    assert not any(WIKI.describe() in t and NEWS.describe() in t for t in titles)


def test_cli_png_html_and_md_list_exactly_those_figures(tmp_path: Path, capsys, cli_env) -> None:
    pytest.importorskip("matplotlib")
    from PIL import Image

    registry = Registry.from_settings(Settings.from_env())
    _populate(registry, dataset="<script>alert(1)</script>")
    assert main(["report", "--model", "tiny-llama", "--json"]) == 0
    points = json.loads(capsys.readouterr().out)
    chart = tmp_path / "chart.png"
    assert main(["report", "--model", "tiny-llama", "-o", str(chart)]) == 0
    assert json.loads(Image.open(chart).text["Description"]) == points
    page = tmp_path / "report.html"
    assert main(["report", "--model", "tiny-llama", "--format", "html", "-o", str(page)]) == 0
    html = page.read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html, "metadata is escaped"
    assert html.count('src="data:image/png;base64,') == 1 and "ctpreg " in html
    rows = [row for row in html.split("<tr>")[1:] if "<td>" in row]
    assert len(rows) == len(points)
    for point in points:
        cells = f'<td>{point["target"]}</td><td class="num">'
        [row] = [r for r in rows if r.startswith(cells) and f'{point["ppl_compressed"]:.2f}' in r]
        assert f'{point["ppl_prompted"]:.2f}' in row
        assert ("collapsed" in row) == point["collapsed"]
    capsys.readouterr()
    assert main(["report", "--model", "tiny-llama", "--format", "md"]) == 0
    table = capsys.readouterr().out
    assert "| gptq-w4-g128 | 20.00 | 30.00 | 25.00 | 50% | 45% | p:1 |" in table
    assert "| gptq-w2-g128 | 20.00 | 5000.00 | 4000.00 | collapsed | collapsed | p:1 |" in table
    assert "| sparsegpt-s50 | 20.00 | 45.00 | 44.90 | 0% | 0% | none |" in table
    assert table.index(f"Measured on {NEWS.describe()}") < table.index("| gptq-w4-g128 | 21.00 | 31.00 | 29.00 |")
    assert main(["report", "--model", "unknown", "--format", "md"]) == 5
    assert main(["report", "--model", "tiny-llama", "--format", "pdf", "-o", str(tmp_path / "x")]) == 2
    assert main(["report", "--model", "tiny-llama", "-o", str(tmp_path)]) == 2
    assert main(["report", "--model", "tiny-llama"]) == 2, "a chart needs a file"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.5])
def test_evidence_refuses_perplexities_that_are_not_finite_or_below_one(registry: Registry, bad: float) -> None:
    from ctpreg.registry.errors import InvalidInput

    _populate(registry)
    before = len(registry.evidence("tiny-llama"))
    prompt = registry.get("p:1")
    target = Target.for_spec("tiny-llama", parse_compression("gptq-w8-g128"))
    for fields in ({"ppl_with": bad}, {"ppl_without": bad}, {"ppl_full": bad}):
        values = {"ppl_without": 30.0, "ppl_with": 25.0, "ppl_full": 20.0, **fields}
        measurement = Measurement(values["ppl_without"], values["ppl_with"], WIKI.label, 5120, target_key=KEY,
                                  eval_data=WIKI, ppl_full=values["ppl_full"])
        with pytest.raises(InvalidInput, match="finite perplexity >= 1"):
            registry.record_evidence(target, prompt, measurement, accepted=False)
    assert len(registry.evidence("tiny-llama")) == before, "nothing recorded, on either backend"


def test_a_stored_infinite_figure_does_not_break_the_chart(registry: Registry) -> None:
    pytest.importorskip("matplotlib")
    from dataclasses import replace

    _populate(registry)
    points = summarize("tiny-llama", registry.evidence("tiny-llama"), registry.list_prompts(model="tiny-llama"))
    broken = [replace(points[0], target="gptq-w8-g128", x=8.0, ppl_prompted=float("inf")),
              replace(points[0], target="gptq-w2-g64", x=2.0, ppl_compressed=float("nan"))]
    chart = _figure(points + broken)
    assert all(math.isfinite(limit) for axis in chart.axes for limit in axis.get_ylim())
    assert broken[1].collapsed and broken[1].gap_recovered is None
