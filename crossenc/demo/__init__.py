"""The main job's demo: a small DeBERTa cross-encoder built offline, served by `vllm serve`.

`python -m crossenc.demo` (or `crossenc demo`) runs it; see `main.py`.
"""


def main(argv: list[str] | None = None) -> int:
    from crossenc.demo.main import main as run

    return run(argv)
