"""What a new user trips on (issue 52): every option explained with its default, every recipe key's meaning shown,
imbalanced folders, the learning-rate finder, predict/eval/info on what `load` takes."""
from __future__ import annotations

import argparse

import pytest

from resnetlab.cli import build_parser, main


def _options(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser, action) of every argument of every subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {a.dest for a in action._choices_actions}
            for name, sub in action.choices.items():
                assert name in helped, f"`resnetlab {' '.join(path + (name,))}` has no help line"
                yield from _options(sub, path + (name,))
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield path, parser, action


def test_every_option_of_every_command_has_help_and_shows_its_default():
    seen = 0
    for path, parser, action in _options(build_parser()):
        where = f"resnetlab {' '.join(path)} {'/'.join(action.option_strings) or action.dest}"
        assert action.help and action.help.strip(), f"{where}: no help"
        seen += 1
        if action.default in (None, False, [], argparse.SUPPRESS):
            continue
        text = " ".join(parser.format_help().split())
        assert f"default: {action.default}" in text or f"default {action.default}" in text, (
            f"{where}: its default {action.default!r} is not in the help")
    assert seen > 80


def test_help_names_the_defaults_users_asked_about(capsys):
    for argv, expected in ((["finetune", "--help"], "two-stage in finetune_cifar100_subset"),
                           (["serve", "--help"], "(default: 8000)"),
                           (["export", "--help"], "(default: 512)")):
        with pytest.raises(SystemExit):
            main(argv)
        assert expected in " ".join(capsys.readouterr().out.split()), argv


def test_every_recipe_key_says_what_it_means(capsys):
    from resnetlab.training.config import recipe_key, recipe_keys
    missing = [k.name for k in recipe_keys() if not k.help]
    assert not missing, f"recipe keys without help: {missing}"
    assert main(["recipes", "keys"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("train.epochs "))
    assert "after finetune.stage1_epochs" in line
    from resnetlab.cli.finetune import STRATEGIES
    assert tuple(recipe_key("finetune.strategy").choices) == STRATEGIES
