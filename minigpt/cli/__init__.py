"""The command-line tools, thin argument parsing over the library (each `scripts/*.py` is a one-line wrapper):

- `generate`: minigpt-generate;  `score`: minigpt-score;
- `finetune`, `reward`, `dpo`, `ppo`: minigpt-finetune / -reward / -dpo / -ppo, on the flags of `trainer`;
- `common`: one-line errors and exit codes, the parser, device choice.
"""
