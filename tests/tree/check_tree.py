#!/usr/bin/env python3
"""Checks the shape of the tree that the architecture promises:

- no engine or tui source over MAX_FILE_LINES lines;
- no function over MAX_FUNCTION_LINES lines, except the model's forward
  and backward (llm.c's habit: one straight line each);
- engine sub-systems depend one way: a folder includes only folders before
  it in LAYERS (or itself), and no two engine files include each other.

Usage: check_tree.py SOURCE_ROOT. Prints what it checked, then one line per
breach; exits 1 on any breach."""
import os
import re
import sys

MAX_FILE_LINES = 900
MAX_FUNCTION_LINES = 100
LONG_FUNCTIONS_ALLOWED = {"model_forward", "model_backward"}
# The engine's sub-systems, lowest first: each may include only those
# before it (and itself).
LAYERS = ["core", "config", "model", "moe", "protocol", "balance", "trainer"]

FUNCTION_START = re.compile(r"^(?:static\s+|inline\s+)*[A-Za-z_][\w\s\*]*?"
                            r"\b(\w+)\s*\([^;]*$")


def sources(root, tops=("engine", "tui")):
    for top in tops:
        for folder, _, files in os.walk(os.path.join(root, top)):
            for f in sorted(files):
                if f.endswith((".c", ".h")):
                    path = os.path.join(folder, f)
                    yield os.path.relpath(path, root)


def functions(lines):
    """(name, first line, line count) of each top-level function: a line
    at column 0 naming it, then a body from a '{' to a '}' at column 0."""
    name = None
    start = None
    for i, line in enumerate(lines):
        if start is None:
            m = FUNCTION_START.match(line)
            if m and not line.startswith(("#", " ", "\t", "}")):
                name, header = m.group(1), i
            if line.startswith("{") and name:
                start = header
        elif line.startswith("}"):
            yield name, start + 1, i - start + 1
            name, start = None, None


def include_graph(root):
    edges = {}
    for path in sources(root, ("engine",)):
        text = open(os.path.join(root, path)).read()
        edges[path] = re.findall(r'#include "(engine/[\w/]+\.h)"', text)
    return edges


def module_of(path):
    """engine/model/model.c -> (engine/model, model)."""
    folder, name = os.path.split(path)
    return folder, os.path.splitext(name)[0]


def main():
    root = sys.argv[1]
    breaches = []
    files = list(sources(root))
    function_count = 0
    for path in files:
        lines = open(os.path.join(root, path)).read().split("\n")
        if path.endswith(".c") and len(lines) - 1 > MAX_FILE_LINES:
            breaches.append("%s: %d lines (at most %d)"
                            % (path, len(lines) - 1, MAX_FILE_LINES))
        for name, first, count in functions(lines):
            function_count += 1
            if count > MAX_FUNCTION_LINES and name not in LONG_FUNCTIONS_ALLOWED:
                breaches.append("%s:%d: %s is %d lines (at most %d)"
                                % (path, first, name, count,
                                   MAX_FUNCTION_LINES))

    edges = include_graph(root)
    modules = {}
    for path, includes in edges.items():
        src = module_of(path)
        for inc in includes:
            dst = module_of(inc)
            if dst != src:
                modules.setdefault(src, set()).add(dst)
            layer_from = path.split("/")[1]
            layer_to = inc.split("/")[1]
            if layer_from in LAYERS and layer_to in LAYERS and \
                    LAYERS.index(layer_to) > LAYERS.index(layer_from):
                breaches.append("%s includes %s: engine/%s may not depend on "
                                "engine/%s" % (path, inc, layer_from, layer_to))
    for src, dsts in modules.items():
        for dst in dsts:
            if src in modules.get(dst, set()):
                if src < dst:
                    breaches.append("include circle: %s/%s and %s/%s include "
                                    "each other" % (src + dst))

    print("checked %d sources, %d functions, %d engine files' includes"
          % (len(files), function_count, len(edges)))
    for b in breaches:
        print("FAIL: " + b)
    return 1 if breaches else 0


if __name__ == "__main__":
    sys.exit(main())
