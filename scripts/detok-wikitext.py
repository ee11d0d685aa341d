#!/usr/bin/env python3
"""WikiText-2 raw with its tokenization undone, for a diagnostic: does a student lose to its
teacher on WikiText's spacing (" @-@ ", " , ", " 's") or on its content? Not an evaluation text
of any table: the issue's rows are on the raw file.

    scripts/detok-wikitext.py IN.txt OUT.txt
"""
import re
import sys

if len(sys.argv) != 3:
    sys.exit("usage: scripts/detok-wikitext.py IN.txt OUT.txt")
with open(sys.argv[1], encoding="utf-8") as f:
    t = f.read()
t = t.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
t = re.sub(r" ([,.;:!?)\]]|'s|n't|'re|'ve|'d|'ll|'m)", r"\1", t)
t = re.sub(r"([(\[]) ", r"\1", t)
t = re.sub(r'" (.*?) "', r'"\1"', t)
with open(sys.argv[2], "w", encoding="utf-8") as f:
    f.write(t)
