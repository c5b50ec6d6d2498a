#!/usr/bin/env python3
"""The man page and the README against the code.

    check_docs.py SOURCE_ROOT MOECTL [MAN_PAGE]

- tui/moectl.1 renders with no roff warning (groff -ww, man --warnings);
- it has an entry for every subcommand and option of `moectl --help`,
  every command of the grammar's table (engine/protocol/command.c), every
  script metric (engine/protocol/script.h), every environment variable
  that engine/, tui/ or kernels/ read with getenv, and every exit status
  that headless.h, tui/main.c's usage and README.md document;
- README.md keeps its "Quick start" heading and stays within 400 lines.

MAN_PAGE (default SOURCE_ROOT/tui/moectl.1) lets a mutated copy be checked.
Exits 77 (skipped) only when `man` is not installed."""
import os
import re
import shutil
import subprocess
import sys

README_MAX_LINES = 400


def render(page):
    """The page as man shows it at 80 columns, and its roff warnings."""
    env = dict(os.environ, MANWIDTH="80",
               LC_ALL="C.UTF-8", MANPAGER="cat", PAGER="cat")
    man = subprocess.run(["man", "--warnings", "-l", page], env=env,
                         capture_output=True, text=True)
    warnings = man.stderr.strip()
    if shutil.which("groff"):
        groff = subprocess.run(["groff", "-man", "-ww", "-z", page],
                               capture_output=True, text=True)
        warnings = "\n".join(w for w in (warnings, groff.stderr.strip()) if w)
        if groff.returncode != 0:
            warnings += "\ngroff exited %d" % groff.returncode
    if man.returncode != 0:
        warnings += "\nman exited %d" % man.returncode
    # Drop overstrike formatting, should a man-db apply it anyway.
    text = re.sub(r".\x08", "", man.stdout)
    return text, warnings


def sections(text):
    """Section name -> its lines, from the rendered page."""
    out, name = {}, None
    for line in text.splitlines():
        if re.match(r"^[A-Z][A-Z /]+$", line):
            name = line.strip()
            out[name] = []
        elif name:
            out[name].append(line)
    return out


def tags(lines):
    """The first word of each tagged paragraph (indented 7, as .TP puts
    them), and of each word list such a tag holds ("OMP_X, OPENBLAS_Y")."""
    found = set()
    for line in lines:
        m = re.match(r"^ {7}(\S.*)$", line)
        if not m:
            continue
        for part in re.split(r",\s*", m.group(1)):
            word = part.split()[0] if part.split() else ""
            found.add(word)
    return found


def usage_names(moectl):
    usage = subprocess.run([moectl, "--help"], capture_output=True,
                           text=True, check=True).stdout
    synopsis = usage.split("\n\n")[0]
    subcommands = set(re.findall(r"moectl ([a-z][a-z-]*)", synopsis))
    options = set(re.findall(r"(--[a-z][a-z-]*)", usage))
    return subcommands, options


def grammar_names(root):
    src = open(os.path.join(root, "engine/protocol/command.c")).read()
    table = re.search(r"command_specs\[\]\s*=\s*\{(.*?)\n\};", src, re.S)
    names = re.findall(r'\{"([a-z][a-z-]*)",\s*COMMAND_', table.group(1))
    return set(names)


def console_keys(root):
    """The single-character keys of the console's key table
    (tui/console/keys.c) in its normal mode and in the demo's story."""
    src = open(os.path.join(root, "tui/console/keys.c")).read()
    return set(re.findall(r"\{\{'(.)'\}, \"\1\", [^{}]*?\b(?:NORMAL|KEYS_STORY)\b",
                          src, re.S))


def script_metrics(root):
    src = open(os.path.join(root, "engine/protocol/script.h")).read()
    block = re.search(r"#define SCRIPT_METRICS\(X\)(.*?)\n\n", src, re.S)
    return set(re.findall(r"X\((\w+),", block.group(1)))


def environment_names(root):
    names = set()
    for top in ("engine", "tui", "kernels"):
        for folder, _, files in os.walk(os.path.join(root, top)):
            for f in files:
                if f.endswith((".c", ".h", ".cu", ".cuh")):
                    text = open(os.path.join(folder, f)).read()
                    names.update(re.findall(r'getenv\("(\w+)"\)', text))
    return names


def exit_statuses(root):
    """Statuses written as "N word" after "Exit status" / "exit status"."""
    statuses = set()
    texts = [open(os.path.join(root, p)).read()
             for p in ("engine/trainer/headless.h", "tui/main.c",
                       "README.md")]
    for text in texts:
        for m in re.finditer(r"[Ee]xit status:?(.{0,400})", text, re.S):
            statuses.update(re.findall(r"\b(\d{1,3}) (?:done|runtime|bad|"
                                       r"stopped)", m.group(1)))
    return statuses


def main():
    if len(sys.argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    root, moectl = sys.argv[1], sys.argv[2]
    page = sys.argv[3] if len(sys.argv) == 4 else os.path.join(
        root, "tui/moectl.1")
    if not shutil.which("man"):
        print("man is not installed (apt-get install man-db groff-base)")
        return 77

    failures = []
    text, warnings = render(page)
    if warnings:
        failures.append("the man page renders with warnings:\n" + warnings)
    secs = sections(text)
    for name in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "OPTIONS",
                 "KEYS", "COMMAND GRAMMAR", "SCRIPTS", "METRICS RECORDS",
                 "FILES", "ENVIRONMENT", "EXIT STATUS", "CONFIGURATION",
                 "EXAMPLES", "SEE ALSO"):
        if name not in secs:
            failures.append("no section %s" % name)
    get = lambda name: secs.get(name, [])

    subcommands, options = usage_names(moectl)
    synopsis = " ".join(" ".join(get("SYNOPSIS")).split())
    command_tags = tags(get("COMMANDS"))
    for sub in sorted(subcommands):
        if "moectl " + sub not in synopsis:
            failures.append("SYNOPSIS lacks moectl %s" % sub)
        if sub not in command_tags:
            failures.append("COMMANDS has no entry for %s" % sub)
    option_tags = tags(get("OPTIONS")) | tags(get("COMMANDS"))
    for option in sorted(options):
        if option not in option_tags:
            failures.append("OPTIONS has no entry for %s" % option)

    def require_entries(section, names):
        section_tags = tags(get(section))
        for name in sorted(names):
            if name not in section_tags:
                failures.append("%s has no entry for %s" % (section, name))

    keys = console_keys(root)
    if not keys:
        failures.append("no keys found in tui/console/keys.c's table")
    require_entries("KEYS", keys)
    require_entries("COMMAND GRAMMAR", grammar_names(root))
    scripts = " ".join(" ".join(get("SCRIPTS")).split())
    for metric in sorted(script_metrics(root)):
        if not re.search(r"\b%s\b" % re.escape(metric), scripts):
            failures.append("SCRIPTS does not name the metric %s" % metric)

    require_entries("ENVIRONMENT", environment_names(root))
    statuses = exit_statuses(root)
    if not statuses:
        failures.append("found no documented exit status to check")
    require_entries("EXIT STATUS", statuses)

    readme = open(os.path.join(root, "README.md")).read().splitlines()
    if len(readme) > README_MAX_LINES:
        failures.append("README.md has %d lines (at most %d)" %
                        (len(readme), README_MAX_LINES))
    if "## Quick start" not in readme:
        failures.append('README.md lost its "## Quick start" heading')

    print("checked %d console keys" % len(keys))
    print("checked %d subcommands, %d options, %d grammar commands, %d "
          "script metrics, %d environment variables, exit statuses %s; "
          "README.md %d lines" %
          (len(subcommands), len(options), len(grammar_names(root)),
           len(script_metrics(root)), len(environment_names(root)),
           ", ".join(sorted(statuses, key=int)), len(readme)))
    for f in failures:
        print("FAIL: " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
