"""Writes the tasks that ship with edge-c2i: ``bundled:continents`` and ``bundled:continents-open``.

    python -m edge_c2i.tasks_data.make_continents [ZONE_TAB]

One example per city of the time zone database's ``zone.tab`` (IANA tzdb, public domain;
``/usr/share/zoneinfo/zone.tab`` on Debian): ``"Nairobi is a city on the continent of"`` with the continent
as the answer, among six choices (continents.jsonl), or as an open answer scored on its
first token (continents-open.jsonl).  tzdb names the area (``Africa/Nairobi``); the Americas
are split by the country code in the same row (SOUTH_AMERICA).  Oceans, Antarctica and
regions named after a state rather than a city (``America/Indiana/Knox``) are left out.

It exists so that edge-c2i runs with no download at all: the BIG-bench tasks come from the
``bigbench==1.0.0`` sdist on PyPI, which a package index may not serve.  The file is
committed; this script says where every line came from.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

AREAS = {"Africa": "Africa", "Asia": "Asia", "Europe": "Europe", "Australia": "Australia"}
SOUTH_AMERICA = {"AR", "BO", "BR", "CL", "CO", "EC", "FK", "GF", "GY", "PE", "PY", "SR",
                 "UY", "VE"}
CHOICES = ["Africa", "Asia", "Australia", "Europe", "North America", "South America"]
NESTED = {"Argentina"}  # America/Argentina/Salta is a city; America/Indiana/Knox is not
HERE = Path(__file__).parent


def examples(zone_tab: Path) -> list[dict]:
    seen, rows = set(), []
    for line in zone_tab.read_text(encoding="ascii").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        country, _, zone = line.split("\t")[:3]
        area, *rest = zone.split("/")
        if len(rest) == 2 and rest[0] not in NESTED or len(rest) not in (1, 2):
            continue
        if area == "America":
            continent = "South America" if country in SOUTH_AMERICA else "North America"
        elif area in AREAS:
            continent = AREAS[area]
        else:
            continue
        city = rest[-1].replace("_", " ")
        if city in seen:
            continue
        seen.add(city)
        rows.append({"prompt": f"{city} is a city on the continent of", "answer": continent,
                     "choices": CHOICES})
    return rows


def main() -> None:
    zone_tab = Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/zoneinfo/zone.tab")
    rows = examples(zone_tab)
    for name, keep in (("continents", rows),
                       ("continents-open", [{k: r[k] for k in ("prompt", "answer")} for r in rows])):
        out = HERE / f"{name}.jsonl"
        tmp = out.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
        tmp.replace(out)
        print(f"{out}: {len(keep)} examples from {zone_tab}", file=sys.stderr)


if __name__ == "__main__":
    main()
