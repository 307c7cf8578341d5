"""The ``statewise data prepare`` and ``statewise tokenizer train`` commands."""

from __future__ import annotations

import argparse
import time

from statewise.tasks.atomic import check_new_directory, new_directory


def add_data_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="prepare a corpus: tokenize it once into a memory-mapped file")
    data = p.add_subparsers(dest="data_command", metavar="DATA", required=True)
    p = data.add_parser(
        "prepare",
        help="tokenize SRC into DIR (tokens.bin, documents.bin, header.json, tokenizer/); "
        "then train with [data] path = DIR",
    )
    p.add_argument(
        "src",
        metavar="SRC",
        help="a text file, a directory, a glob pattern (quote it) or JSON Lines (*.jsonl); "
        "'' for the built-in corpus",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="a new or empty directory")
    p.add_argument(
        "--tokenizer", default="", metavar="T", help="a tokenizer directory (default: bytes)"
    )
    p.add_argument("--text-field", default="text", help="the text's field in JSON Lines")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("tokenizer", help="train a subword tokenizer")
    tok = p.add_subparsers(dest="tokenizer_command", metavar="TOKENIZER", required=True)
    p = tok.add_parser(
        "train",
        help="train a byte-level BPE (Hugging Face tokenizers) on FILES into DIR; use it "
        "with [data] tokenizer = DIR",
    )
    p.add_argument("files", nargs="+", metavar="FILES", help="sources, as for data prepare")
    p.add_argument("--vocab-size", type=int, required=True, metavar="N")
    p.add_argument("--out", required=True, metavar="DIR", help="a new or empty directory")
    p.add_argument("--text-field", default="text", help="the text's field in JSON Lines")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_data(args: argparse.Namespace, extra: list[str]) -> int:
    from statewise.tasks.prepared import prepare
    from statewise.tasks.tokenizer import load_tokenizer

    check_new_directory(args.out, "--out")  # before anything is read
    tokenizer = load_tokenizer(args.tokenizer)
    header = prepare(args.src, args.out, tokenizer, args.text_field, progress=not args.no_progress)
    print(
        f"prepared {header['n_tokens']:,} tokens ({header['dtype']}) in "
        f"{header['n_documents']:,} documents from {header['source']} with the "
        f"{header['tokenizer']['kind']} tokenizer (vocabulary {header['vocab_size']:,}) "
        f"in {header['seconds']:.1f} s; train with [data] path = {args.out!r}"
    )
    return 0


def cmd_tokenizer(args: argparse.Namespace, extra: list[str]) -> int:
    from statewise.tasks.bpe import train_bpe

    check_new_directory(args.out, "--out")
    started = time.perf_counter()
    tokenizer = train_bpe(args.files, args.vocab_size, args.text_field, not args.no_progress)
    with new_directory(args.out) as tmp:
        tokenizer.save(tmp)
    print(
        f"trained a byte-level BPE of {tokenizer.vocab_size:,} tokens in "
        f"{time.perf_counter() - started:.1f} s into {args.out}; use it with "
        f'[data] tokenizer = {args.out!r} and task = "lm"'
    )
    return 0
