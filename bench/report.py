"""Render the JSON that `make bench` wrote as the README's benchmark tables.

`python -m bench.report` prints Markdown; `--write README.md` replaces the block between
`<!-- bench:begin -->` and `<!-- bench:end -->`. Every number comes from build/bench/*.json of
one `make bench` run, so the README quotes exactly what was measured on the current code.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from libs.runtime.settings_doc import write_block

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "build" / "bench"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def _load(name: str) -> Any:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _f(x: float, digits: int = 1) -> str:
    return f"{x:,.{digits}f}"


def inference(d: Any) -> list[str]:
    hf_tokens = d.get("transformers_tokens_per_request")
    out = [
        "**Inference engine** (`bench/inference.py`; tokens per request: "
        + ", ".join(f"{v} at c={k}" for k, v in d["tokens_per_request"].items())
        + (f", {hf_tokens} for transformers" if hf_tokens else "")
        + "; TTFT = time from submission to the first token, ITL = time between consecutive tokens of "
        "one request; triton rows run the same engine inside tritonserver with the same limits; "
        "transformers serves one request at a time, so at c=4 a request's TTFT includes the ones "
        "before it):",
        "",
        "| backend | concurrency | tok/s | ms/token | TTFT p50 / p99 ms | ITL p50 / p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in d["rows"]:
        ttft = (
            "—"
            if r["ttft_p50_ms"] != r["ttft_p50_ms"]
            else f"{_f(r['ttft_p50_ms'])} / {_f(r['ttft_p99_ms'])}"
        )
        itl = "—" if r["itl_p50_ms"] != r["itl_p50_ms"] else f"{_f(r['itl_p50_ms'])} / {_f(r['itl_p99_ms'])}"
        out.append(
            f"| {r['backend']} | {r['concurrency']} | {_f(r['tok_per_s'])} | {_f(r['ms_per_token'], 2)} "
            f"| {ttft} | {itl} |"
        )
    if "quality" in d:
        out += ["", "Quality per tier (teacher-forced on `bench/data/heldout.txt`):", "",
                "| precision | top-1 agreement with fp32 | perplexity |", "|---|---:|---:|"]  # fmt: skip
    for p, q in d.get("quality", {}).items():
        out.append(f"| {p} | {q['top1_agreement_vs_fp32']:.3f} | {q['perplexity']:.2f} |")
    agreement = d.get("batch_agreement")
    if agreement:
        out += batch_agreement(agreement)
    return out


def batch_agreement(a: Any) -> list[str]:
    out = [
        "",
        f"Greedy output across batch compositions (engine; {a['prompts']} prompts, "
        f"{a['tokens_per_request']} tokens each, decoded alone vs inside batches of other prompts; "
        "token agreement counts the positions equal to the alone run):",
        "",
        "| precision | composition | sequences identical | token agreement | mean first divergence |",
        "|---|---|---:|---:|---:|",
    ]
    for precision, by_name in a["results"].items():
        for name, r in by_name.items():
            first = r["first_divergence_mean"]
            first_cell = "—" if first != first else f"token {first:.0f}"
            out.append(
                f"| {precision} | {name} | {r['sequences_identical']:.3f} | {r['token_agreement']:.3f} "
                f"| {first_cell} |"
            )
    return out


def prefix_cache(d: Any) -> list[str]:
    rows = {(r["workload"], r["concurrency"], r["cache"]): r for r in d["rows"]}
    out = [
        f"**Prefix cache** (`bench/prefix_cache.py`, {d['model']}: time to first token with and without "
        "reusing the KV of a cached prompt prefix):",
        "",
        "| workload | prompt tokens | concurrent | TTFT p50 off ms | TTFT p50 on ms | tokens reused |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for (workload, conc, cache), r in rows.items():
        if cache != "off" or (workload, conc, "on") not in rows:
            continue
        on = rows[(workload, conc, "on")]
        off_ms, on_ms = _f(r["ttft_p50_ms"]), _f(on["ttft_p50_ms"])
        out.append(
            f"| {workload} | {r['prompt_tokens']} | {conc} | {off_ms} | {on_ms} | {on['reused_tokens']:.0f} |"
        )
    return out


def safety(d: Any) -> list[str]:
    rows = [
        ("PII + secret rules, per 1k tokens of text", d["pii_rules_per_1k_tokens_ms"]),
        ("ScreenInput with the injection classifier, in-process (new prompts)", d["screen_input_direct_ms"]),
        ("ScreenInput over gRPC (new prompts)", d["screen_input_grpc_ms"]),
        ("ScreenInput of a repeated prompt, in-process (score memo)", d["screen_input_repeated_ms"]),
        ("output screening, per streamed chunk", d["output_chunk_ms"]),
    ]
    out = ["**Safety** (`bench/safety.py`):", "", "| measure | p50 ms | p99 ms |", "|---|---:|---:|"]
    out += [f"| {name} | {v['p50']:.2f} | {v['p99']:.2f} |" for name, v in rows]
    other = {c["threshold"]: c for c in d.get("classifier_test_neuralchemy", [])}
    held = d.get("classifier_held_out_benign")
    refused = {r["threshold"]: r["share"] for r in held["refused"]} if held else {}
    out += ["", "Injection classifier (MiniLM + logistic head) on test splits it never saw: S-Labs (MIT) and "
            "neuralchemy (Apache-2.0), and the share of "
            + (f"{held['rows']} everyday business requests (`{held['file']}`) it would refuse"
               if held else "")
            + ":", "",
            "| threshold | S-Labs precision / recall | neuralchemy precision / recall | neuralchemy benign "
            "flagged | everyday requests refused |",
            "|---:|---:|---:|---:|---:|"]  # fmt: skip
    for c in d["classifier_test"]:
        t, o = c["threshold"], other.get(c["threshold"])
        o_cells = (
            f"{o['precision']:.3f} / {o['recall']:.3f} | {o['false_positive_rate']:.3f}" if o else "— | —"
        )
        share = f"{refused[t]:.3f}" if t in refused else "—"
        out.append(f"| {t} | {c['precision']:.3f} / {c['recall']:.3f} | {o_cells} | {share} |")
    tox = d.get("toxicity_test")
    if tox:
        out += ["", f"Toxicity ({tox['model']}) on the {tox['rows']} labelled rows of "
                f"`services/safety/data/{tox['sample']}`:", "",
                "| threshold | precision | recall | F1 |", "|---:|---:|---:|---:|"]  # fmt: skip
        out += [
            f"| {c['threshold']} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} |"
            for c in tox["results"]
        ]
    return out


def cache(d: Any) -> list[str]:
    sem, exact = d["semantic_lookup_ms"], d["exact_hit_c1_ms"]
    out = [
        "**Cache** (`bench/cache.py`, the cache service over gRPC):",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| exact hit, concurrency 1, p50 / p99 | {exact['p50']:.2f} / {exact['p99']:.2f} ms |",
        f"| exact hits, concurrency 32 | {_f(d['exact_hit_c32_rps'], 0)} req/s |",
        f"| semantic lookup, {sem['entries']:,} entries in the namespace, p50 / p99 "
        f"| {sem['p50']:.2f} / {sem['p99']:.2f} ms |",
        f"| of which embedding the prompt | {d['embed_one_ms']:.2f} ms |",
        "",
        "Semantic threshold on 214 labelled pairs (`tests/data/paraphrases.jsonl`), with the hit guards "
        "(same sampling, same numbers, no single swapped word) and without (raw):",
        "",
        "| threshold | hit rate | false-hit rate | raw hit rate | raw false-hit rate |",
        "|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    out += [
        f"| {r['threshold']:.2f} | {r['hit_rate']:.3f} | {r['false_hit_rate']:.3f} | {r['hit_rate_raw']:.3f} "
        f"| {r['false_hit_rate_raw']:.3f} |"
        for r in d["false_hits"]
    ]
    return out


def edge(d: Any) -> list[str]:
    out = [
        f"**Edge** (`bench/edge.py`: {d['n']} sequential requests to a stand-in router that answers at "
        "once, so the rows are the proxies' own cost; req/s with "
        f"{d['concurrency']} concurrent callers from one Python process, which limits the HTTP rows):",
        "",
        "| path | p50 ms | p99 ms | req/s |",
        "|---|---:|---:|---:|",
    ]
    out += [
        f"| {k} | {v['p50_ms']:.3f} | {v['p99_ms']:.3f} | {_f(v['rps'], 0)} |"
        for k, v in d["results"].items()
    ]
    return out


def mesh(d: Any) -> list[str]:
    out = [
        f"**Mesh overhead** (`bench/mesh.py`: the same greedy generation of {d['max_tokens']} tokens from "
        f"a {d['prompt_tokens']}-token prompt, cache bypassed, end to end through Envoy → router → "
        "tokenizer, safety, cache, inference vs. `GenerateStream` called directly on inference):",
        "",
        "| concurrency | requests | direct p50 / p99 ms | mesh p50 / p99 ms | added p50 ms | added p99 ms "
        "| TTFT p50 direct / mesh ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for conc, lv in d["levels"].items():
        out.append(
            f"| {conc} | {lv['requests']} | {_f(lv['direct_p50_ms'])} / {_f(lv['direct_p99_ms'])} "
            f"| {_f(lv['mesh_p50_ms'])} / {_f(lv['mesh_p99_ms'])} | {_f(lv['overhead_p50_ms'])} "
            f"| {_f(lv['overhead_p99_ms'])} | {_f(lv['direct_ttft_p50_ms'])} / {_f(lv['mesh_ttft_p50_ms'])} |"
        )
    steps = list(next(iter(d["levels"].values()))["router_steps_p50_ms"])
    out += ["", "Per-hop split (medians from the router's audit log; output safety is summed over chunks "
            "and overlaps generation):", "",
            "| concurrency | " + " | ".join(steps) + " | Envoy + hops |",
            "|---:|" + "---:|" * (len(steps) + 1)]  # fmt: skip
    for conc, lv in d["levels"].items():
        cells = [f"{lv['router_steps_p50_ms'].get(s, 0):.2f}" for s in steps]
        out.append(f"| {conc} | " + " | ".join(cells) + f" | {lv['envoy_and_hops_p50_ms']:.2f} |")
    cpu = d.get("cpu_ms_per_request")
    if cpu:
        names = [n for n in cpu["mesh"] if cpu["mesh"][n] or cpu["direct"].get(n)]
        title = "CPU time per request by process (ms; concurrency 1, direct-only calls vs. mesh calls):"
        head = "| calls | " + " | ".join(names) + " | total |"
        out += ["", title, "", head, "|---|" + "---:|" * (len(names) + 1)]
        for kind in ("direct", "mesh"):
            row = cpu[kind]
            cells = [f"{row.get(n, 0):.1f}" for n in names]
            out.append(f"| {kind} | " + " | ".join(cells) + f" | {sum(row.values()):.1f} |")
    rss = d.get("rss_mb")
    if rss:
        out += ["", "Resident memory of each process after those runs (MiB; inference holds the int8 "
                "and fp32 models):", "", "| " + " | ".join(rss) + " |", "|" + "---:|" * len(rss),
                "| " + " | ".join(f"{v:,.0f}" for v in rss.values()) + " |"]  # fmt: skip
    return out


def cache_e2e(d: Any) -> list[str]:
    out = [
        f"**Cache hits end to end** (`bench/cache_e2e.py`: one greedy request repeated through the whole "
        f"mesh — auth, rate limit, template, budget, input safety, lookup, replay; {d['n']} sequential, "
        f"then {d['concurrency']} concurrent callers):",
        "",
        "| path | p50 ms | p99 ms | hits/s |",
        "|---|---:|---:|---:|",
    ]
    out += [
        f"| {k} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {_f(v['rps'], 0)} |"
        for k, v in d["results"].items()
    ]
    return out


def replicas(d: Any) -> list[str]:
    c = d["config"]
    out = [
        f"**Replicas** (`bench/replicas.py`: {c['streams']} concurrent streams x {c['rounds']} rounds, "
        f"{c['max_tokens']} greedy tokens, through Envoy; on 2 cores both replicas share the same "
        "cores, so this shows the balancing, not a speed-up):",
        "",
        "| inference replicas | tok/s | latency p50 / p99 ms | TTFT p50 / p99 ms | generations per replica |",
        "|---:|---:|---:|---:|---|",
    ]
    for n, r in d["results"].items():
        per = " / ".join(f"{x:.0f}" for x in r["generations_per_replica"])
        out.append(
            f"| {n} | {_f(r['tokens_per_s'])} | {_f(r['latency_p50_ms'], 0)} / {_f(r['latency_p99_ms'], 0)} "
            f"| {_f(r['ttft_p50_ms'], 0)} / {_f(r['ttft_p99_ms'], 0)} | {per} |"
        )
    return out


def render() -> str:
    """The Markdown block for every result present."""
    summary = _load("summary") or {}
    machine = summary.get("machine", {})
    out = [BEGIN, "", f"Measured with `make bench` on {machine.get('cpus', '?')} CPU cores "
           f"(Python {machine.get('python', '?')}, no GPU), all tables from one run.", ""]  # fmt: skip
    sections = (("inference", inference), ("prefix_cache", prefix_cache), ("safety", safety),
                ("cache", cache), ("edge", edge), ("mesh", mesh), ("cache_e2e", cache_e2e),
                ("replicas", replicas))  # fmt: skip
    for name, fn in sections:
        data = _load(name)
        if data is not None:
            out += [*fn(data), ""]
    out.append(END)
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", type=Path, help="README to update in place")
    ns = parser.parse_args()
    if ns.write:
        write_block(ns.write, render())
    else:
        print(render())


if __name__ == "__main__":
    main()
