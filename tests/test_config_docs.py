"""Every field of every config section has its doc line: a string right after the field, the
form docs/configs.md points users to (`prco_mega/config.py` and the sections beside their
components)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "prco_mega"
CONFIG_MODULES = ["config.py", "cluster/config.py", "learner/config.py", "rollout/config.py",
                  "tracking/config.py"]


def undocumented_fields(path: Path) -> list[str]:
    """`Class.field` for each annotated field of a dataclass in `path` with no string after it."""
    missing = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ClassDef) or not any(
                "dataclass" in ast.unparse(d) for d in node.decorator_list):
            continue
        body = node.body
        for i, stmt in enumerate(body):
            if isinstance(stmt, ast.AnnAssign) and "ClassVar" not in ast.unparse(stmt.annotation):
                nxt = body[i + 1] if i + 1 < len(body) else None
                documented = (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                              and isinstance(nxt.value.value, str))
                if not documented:
                    missing.append(f"{node.name}.{ast.unparse(stmt.target)}")
    return missing


def test_the_check_sees_a_field_without_doc(tmp_path):
    src = tmp_path / "c.py"
    src.write_text("from dataclasses import dataclass\n@dataclass\nclass A:\n    x: int = 1\n"
                   "    \"\"\"doc\"\"\"\n    y: int = 2\n")
    assert undocumented_fields(src) == ["A.y"]


@pytest.mark.parametrize("module", CONFIG_MODULES)
def test_every_config_field_has_a_doc_line(module):
    assert undocumented_fields(ROOT / module) == []
