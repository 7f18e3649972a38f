"""`resnetlab recipes [show NAME | keys]`: the bundled recipes, one of them as YAML, or every recipe key."""
from __future__ import annotations

import argparse
import json

from ..errors import UserError


def add_parser(sub) -> None:
    s = sub.add_parser("recipes", help="the bundled recipes (show NAME: its YAML; keys: every recipe key)")
    s.add_argument("action", nargs="?", choices=("list", "show", "keys"), default="list",
                   help="list the bundled recipes, show one (a name or a YAML file), or list every recipe key")
    s.add_argument("name", nargs="?", help="recipe name or file (for show)")
    s.add_argument("--json", action="store_true", help="print as JSON")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..training.config import bundled_recipes, load_recipe, recipe_keys, recipe_text
    if args.action == "show":
        if not args.name:
            raise UserError(f"recipes show: name a recipe ({', '.join(bundled_recipes())})")
        text = recipe_text(args.name)[0]
        load_recipe(args.name)  # a file is shown only when it is a recipe (YAML that validates), never any file
        print(text, end="")
        return
    if args.name:
        raise UserError(f"recipes {args.action}: takes no name (did you mean `resnetlab recipes show {args.name}`?)")
    if args.action == "keys":
        from ..schema import type_name
        keys = recipe_keys()
        if args.json:
            print(json.dumps([{"key": k.name, "type": type_name(k.type), "default": k.default, "allowed": k.allowed(),
                               "resume": k.resume, "help": k.help} for k in keys], indent=2))
            return
        for k in keys:
            resume = "  (may change on --resume)" if k.resume else ""
            print(f"{k.name:<36}{type_name(k.type):<8}{json.dumps(k.default):<16}{k.allowed():<34}{k.help}{resume}")
        print("Set any of them in a recipe file or as key=value after the command, e.g. train.epochs=5.")
        return
    recipes = {name: load_recipe(name) for name in bundled_recipes()}  # the recipe's own defaults fill gaps
    rows = [{"name": name, "model": r.model.name, "description": r.description} for name, r in recipes.items()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows) + 2
    for r in rows:
        print(f"{r['name']:<{width}}{r['description']}")
    print("Use one with `resnetlab train --recipe NAME`; see it with `resnetlab recipes show NAME`.")
