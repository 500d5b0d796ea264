"""`steer-eval` commands that read what runs produced: analyze, report, judge, tokens and compare.

Split from cli.py (which builds the parser and dispatches) to keep each module readable; the library never imports
either.
"""
from __future__ import annotations

import json
import sys

from steer_eval.cli.types import chatty, non_negative, positive
from steer_eval.steering.embedded import DEFAULT_MODEL


class _JudgeCount:
    """Counts what --rejudge changed, and records judged by an older scorer when it is not asked for."""

    def __init__(self):
        self.records = self.changed = self.stale = 0

    def rejudged(self, records):
        from steer_eval.runs.records import rejudge
        for record in records:
            fresh = rejudge(record)
            self.records += 1
            self.changed += fresh.per_behavior != record.per_behavior
            yield fresh

    def counted(self, records):
        from steer_eval.runs.records import judged_by_older_verifiers
        for record in records:
            self.stale += judged_by_older_verifiers(record)
            yield record


def analyze(args) -> int:
    from steer_eval.report.compare import load_run
    from steer_eval.report.plots import plot
    from steer_eval.report.tables import markdown_table
    from steer_eval.scoring.verdict import SCORER_VERSION

    count = _JudgeCount()
    summaries = load_run(args.records, through=count.rejudged if args.rejudge else count.counted).summaries
    if args.rejudge:
        print(f"steer-eval: re-judged {count.records} records with scorer version {SCORER_VERSION}; "
              f"{count.changed} got a different verdict", file=sys.stderr)
    elif count.stale:
        print(f"steer-eval: warning: {count.stale} records were judged by an older scorer than this version's "
              f"({SCORER_VERSION}); add --rejudge to judge them by today's rules", file=sys.stderr)
    if args.json:
        print(json.dumps([{"control_method": c, "mode": m, "k": k, **s} for (c, m, k), s in summaries.items()],
                         indent=2))
    else:
        print(markdown_table(summaries))
    if args.plot:
        print(f"plot written to {plot(summaries, args.plot)}", file=sys.stderr)
    if args.html:
        from steer_eval.report.compare import default_name, rejudged
        from steer_eval.report.page.build import write_report

        path = write_report([args.records], [default_name(args.records)], args.html, page_rule(args),
                            rejudged if args.rejudge else None, progress=chatty(args))
        print(f"report written to {path.resolve()}", file=sys.stderr)
    return 0


def add_inspection_commands(commands) -> None:
    tokens = commands.add_parser("tokens", help="inspect steering tokens: list, pca, nearest, cosine; export-steered")
    tokens_commands = tokens.add_subparsers(dest="tokens_command", required=True)
    what = {"list": "every token: norm (vs the embedding rows' mean norm), category, training summary",
            "pca": "PNG: the tokens on their top two principal axes, by category, vocabulary behind them",
            "nearest": "the vocabulary tokens nearest (cosine) to each steering token",
            "cosine": "cosine similarities between the tokens: printed, and a heatmap PNG"}
    for name, help_text in what.items():
        command = tokens_commands.add_parser(name, help=help_text, description=help_text)
        command.add_argument("names", nargs="*", metavar="TOKEN", help="only these tokens, e.g. german '<and>' "
                                                                        "(default: every token in the folder)")
        command.add_argument("--model", default=DEFAULT_MODEL, help="embedded model name or local model folder")
        command.add_argument("--tokens-dir", "--tokens_dir", dest="tokens_dir", default=None,
                             help="folder holding <name>/vector.safetensors (default: the tokens shipped for MODEL)")
        if name in ("list", "nearest"):
            command.add_argument("--json", action="store_true")
        if name in ("pca", "cosine"):
            command.add_argument("--out", required=True, metavar="FILE.png")
    tokens_commands.choices["nearest"].add_argument("--k", type=positive, default=10)
    tokens_commands.choices["pca"].add_argument("--vocabulary-points", type=non_negative, default=3000,
                                                help="vocabulary rows drawn behind the tokens (0: none)")
    export_help = "write the caa/<behaviour> vectors, summed, as the .pt file lm-eval's stock `steered` model reads"
    export = tokens_commands.add_parser("export-steered", help=export_help, description=export_help)
    export.add_argument("--behaviors", nargs="+", required=True, metavar="B", help="e.g. german words_10_50")
    export.add_argument("--out", required=True, metavar="FILE.pt")
    export.add_argument("--model", default=None,
                        help="embedded model name or local model folder: the vectors are checked against its input "
                             "embeddings (default: not checked; the store of the default model)")
    export.add_argument("--tokens-dir", "--tokens_dir", dest="tokens_dir", default=None,
                        help="folder holding caa/<behaviour>/ (default: the tokens shipped for MODEL)")

    report = commands.add_parser(
        "report", help="one self-contained HTML page of one or more runs: identity, tables, figures, order view, "
                       "sample browser, one prompt side by side",
        description="Write one HTML file that opens from disk in any current browser, with nothing fetched at view "
                    "time. Every number comes from all records; the responses shown are chosen by a stated, seeded "
                    "rule (docs/report.md).")
    report.add_argument("runs", nargs="+", metavar="RUN",
                        help="records of a run: a JSONL file, a folder of them or a .tar.gz")
    report.add_argument("--html", required=True, metavar="OUT.html", help="the page to write")
    report.add_argument("--name", action="append", default=None,
                        help="a name per RUN, in order (default: its file or folder name)")
    report.add_argument("--rejudge", action="store_true",
                        help="judge every response again with this version's verifiers first")
    add_page_options(report)

    compare = commands.add_parser("compare", help="several runs side by side: a markdown table and plots")
    compare.add_argument("runs", nargs="+", metavar="RUN",
                         help="records of a run: a JSONL file, a folder of them or a .tar.gz")
    compare.add_argument("--name", action="append", default=None,
                         help="a name per RUN, in order (default: its file or folder name)")
    compare.add_argument("--out", required=True, metavar="DIR", help="comparison.md and the PNGs go here")
    compare.add_argument("--rejudge", action="store_true",
                         help="judge every response again with this version's verifiers before comparing")


def add_page_options(parser) -> None:
    """How many responses the HTML page embeds (report, analyze --html); SampleRule holds the defaults."""
    from steer_eval.report.page.samples import SampleRule

    rule = SampleRule()
    parser.add_argument("--seed", type=int, default=rule.seed, help="seed of the hash that picks the samples shown")
    parser.add_argument("--cases-per-k", type=non_negative, default=rule.cases_per_k,
                        help="prompts per k shown with every response to them (all orders and control methods)")
    parser.add_argument("--flip-cases", type=non_negative, default=rule.flip_cases,
                        help="at most this many more such prompts, one per combination, whose verdict flips "
                             "between orders")
    parser.add_argument("--failures-per-setting", type=non_negative, default=rule.failures_per_setting,
                        help="failing responses shown per run and setting")


def page_rule(args):
    from steer_eval.report.page.samples import SampleRule

    return SampleRule(seed=args.seed, cases_per_k=args.cases_per_k, flip_cases=args.flip_cases,
                      failures_per_setting=args.failures_per_setting)


def report(args) -> int:
    from steer_eval.report.compare import rejudged, run_names
    from steer_eval.report.page.build import write_report

    path = write_report(args.runs, run_names(args.runs, args.name), args.html, page_rule(args),
                        rejudged if args.rejudge else None, progress=chatty(args))
    print(path.resolve())
    return 0


def tokens(args) -> int:
    from steer_eval.report import tokens as token_tools

    if args.tokens_command == "export-steered":
        return export_steered(args)
    tokens = token_tools.load_token_set(args.model, args.tokens_dir, args.names)
    if args.tokens_command == "list":
        print(token_tools.list_json(tokens) if args.json else token_tools.list_markdown(tokens))
    elif args.tokens_command == "nearest":
        nearest = token_tools.nearest_tokens(tokens, args.k)
        print(json.dumps({name: [{"id": i, "text": text, "cosine": round(cos, 4)} for i, text, cos in found]
                          for name, found in nearest.items()}, indent=2, ensure_ascii=False) if args.json
              else token_tools.nearest_markdown(nearest))
    elif args.tokens_command == "pca":
        print(f"plot written to {token_tools.write_pca(tokens, args.out, args.vocabulary_points)}", file=sys.stderr)
    else:
        matrix = token_tools.cosine_matrix(tokens.vectors)
        print(token_tools.cosine_markdown(tokens.names, matrix))
        summary = token_tools.and_orthogonality(tokens.names, matrix, tokens.metadata)
        if summary:
            print(f"\n{summary}")
        print(f"plot written to {token_tools.write_cosine(tokens, args.out)}", file=sys.stderr)
    return 0


def export_steered(args) -> int:
    from pathlib import Path

    from steer_eval.steering.activation import vector_name
    from steer_eval.scoring.behaviors import resolve
    from steer_eval.training.caa import export_steered as write
    from steer_eval.steering.model_store import ModelError
    from steer_eval.steering.models import model_label, resolve_model_path
    from steer_eval.steering.tokens import ModelIdentity, TokenError, TokenStore, default_tokens_dir

    resolve(args.behaviors)  # unknown ids and conflicting pairs fail before any file is read
    store = TokenStore(args.tokens_dir or default_tokens_dir(model_label(args.model or DEFAULT_MODEL)))
    expected, folder = None, None
    if args.model is not None:
        from steer_eval.steering.models import read_input_embeddings
        folder = Path(resolve_model_path(args.model))
        if not folder.is_dir():
            raise ModelError(f"export-steered checks the vectors against a local model folder's input embeddings, "
                             f"and {args.model!r} is not one; pass an embedded model name or a downloaded folder")
        expected = ModelIdentity.of(model_label(args.model), read_input_embeddings(folder))
    names = [vector_name("caa", b) for b in args.behaviors]
    missing = [name for name in names if not store.has(name)]
    if missing:
        available = ", ".join(n for n in store.names() if n.startswith("caa/")) or "none"
        raise TokenError(f"no CAA vector {', '.join(missing)} in {store.directory} (available: {available}); make "
                         "it with trainers/caa.py or pass --tokens-dir with the folder that holds caa/<behaviour>/")
    vectors = [store.load(name, expected) for name in names]
    models = {(t.model.model_id, t.model.fingerprint) for t in vectors}
    if len({fingerprint for _, fingerprint in models}) > 1:
        raise TokenError(f"the vectors in {store.directory} were made for different models "
                         f"({'; '.join(f'{m} (embedding fingerprint {f})' for m, f in sorted(models))}); export "
                         "vectors of one model")
    path = write(vectors, args.out).resolve()
    pretrained = folder if folder is not None else f"<folder of {vectors[0].model.model_id}>"
    print(path)
    print(f"lm_eval --model steered --model_args pretrained={pretrained},steer_path={path} --tasks TASKS "
          "--apply_chat_template --metadata '{\"prompt_only\": true}'")
    return 0


def compare(args) -> int:
    from steer_eval.report.compare import load_runs, write_comparison

    runs = load_runs(args.runs, args.name, args.rejudge)
    table, written = write_comparison(runs, args.out)
    print(table)
    print("written: " + ", ".join(str(path) for path in written), file=sys.stderr)
    return 0


def add_judge_command(commands) -> None:
    judge = commands.add_parser("judge", help="score response quality (relevance, fluency) with an LLM judge",
                                description="Score each record's response with an LLM judge over an OpenAI-compatible "
                                            "endpoint: LLM_JUDGE_BASE_URL, LLM_JUDGE_MODEL, LLM_JUDGE_API_KEY.")
    judge.add_argument("records", help="a records JSONL file, a folder of them (grid output) or a .tar.gz")
    judge.add_argument("--base-url", default=None, help="e.g. http://127.0.0.1:8000/v1 (default: LLM_JUDGE_BASE_URL)")
    judge.add_argument("--model", default=None, help="the judge model (default: LLM_JUDGE_MODEL)")
    judge.add_argument("--concurrency", type=positive, default=8, help="requests in flight at once")
    judge.add_argument("--limit", type=positive, default=None, help="only the first N records")
    judge.add_argument("--timeout", type=float, default=60.0, help="seconds per request before it is retried")
    judge.add_argument("--no-json-schema", dest="json_schema", action="store_false",
                       help="do not send response_format json_schema (for endpoints that reject it)")


def judge(args) -> int:
    from steer_eval.judges.llm import JudgeConfig, judge_records, summarize

    config = JudgeConfig.from_environment(args.base_url, args.model, concurrency=args.concurrency,
                                          timeout_s=args.timeout, json_schema=args.json_schema)
    result = judge_records(args.records, config, limit=args.limit)
    lines = ["| control | n scored | errors | relevance | fluency | combined |", "|---|---|---|---|---|---|"]
    for method, s in summarize(result.rows).items():
        means = " | ".join("-" if s[name] is None else f"{s[name]:.3f}" for name in ("relevance", "fluency",
                                                                                    "combined"))
        lines.append(f"| {method} | {s['n']} | {s['errors']} | {means} |")
    print("\n".join(lines))
    print(f"judged by {config.model}: {len(result.rows) - result.errors} scored, {result.errors} errors, "
          f"{result.from_cache} from the cache, {result.requests} requests; scores in {result.scores_path}",
          file=sys.stderr)
    return 0
