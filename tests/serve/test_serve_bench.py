"""``radfm bench serve`` in miniature: the transformers engines only, a few tokens, nothing written."""

from __future__ import annotations

from radfm import registry


def test_serve_benchmark_runs_and_reports_levels(tmp_path):
    run = registry.load("radfm.bench", "serve")
    out = run(["--engines", "transformers", "transformers-seq", "--concurrency", "1", "3", "--max-new-tokens", "4",
               "--min-requests", "3", "--out", str(tmp_path / "benchmarks.md")])
    res = out["results"]
    assert set(res) == {"transformers", "transformers-seq"}
    for by_c in res.values():
        assert set(by_c) == {"1", "3"}
        for s in by_c.values():
            assert s["requests"] == 3 and 0 < s["tokens"] <= 12 and s["p50_s"] <= s["p95_s"] + 1e-9
    text = (tmp_path / "benchmarks.md").read_text()
    assert "<!-- bench:serve:start -->" in text and "transformers (batched)" in text
    assert (tmp_path / "bench" / "serve.json").is_file()
