#!/usr/bin/env python3
"""Longest functions of C++ sources: lines from the header's line to the closing brace (lambdas
count with the function around them). usage: function-lengths.py [--top N] FILE..."""
import re
import sys

CONTROL = re.compile(r"^(if|for|while|switch|catch|else|do|return|namespace|struct|class|enum|union)\b")


def strip(text):
    # blank out comments, strings and character literals, keeping newlines
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i)); i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2) + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j])); i = j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(" " * (j + 1 - i)); i = j + 1
        else:
            out.append(c); i += 1
    return "".join(out)


def functions(path):
    text = strip(open(path).read())
    res, stack, start = [], [], 0
    for i, c in enumerate(text):
        if c == "{":
            header = text[start:i].strip()
            hline = text.count("\n", 0, start + len(text[start:i]) - len(text[start:i].lstrip()))
            is_fn = (re.search(r"\)\s*(const)?\s*(noexcept)?\s*(override)?\s*(->\s*[\w:<>*& ]+)?$", header)
                     and not CONTROL.match(header) and not re.search(r"\]\s*\(", header)
                     and not any(f for f in stack))
            name = re.sub(r"\s+", " ", header.split("(")[0]).split(" ")[-1] if is_fn else None
            stack.append((name, hline) if is_fn else None)
            start = i + 1
        elif c == "}":
            top = stack.pop() if stack else None
            if top:
                res.append((text.count("\n", 0, i) - top[1] + 1, top[0], path, top[1] + 1))
            start = i + 1
        elif c == ";":
            start = i + 1
    return res


def main():
    args = sys.argv[1:]
    top = 15
    if args[:1] == ["--top"]:
        top, args = int(args[1]), args[2:]
    rows = sorted((f for p in args for f in functions(p)), reverse=True)
    for length, name, path, line in rows[:top]:
        print(f"{length:5d}  {name}  ({path}:{line})")


if __name__ == "__main__":
    main()
