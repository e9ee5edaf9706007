"""Drug-code mapping (NDC -> RXCUI -> ATC4 -> ATC3) and code names.

The chain of the GAMENet / SafeDrug / LEADER recipe: NDC (11-digit string) -> RXCUI via
``ndc2rxnorm_mapping.txt`` (a Python dict literal, read with ``ast.literal_eval``), RXCUI
-> ATC4 via ``rxcui2atc4.csv`` taking each RXCUI's first row in file order, ATC3 = the
first 4 characters. Extra ``NDC,ATC4`` or ``NDC,ATC3`` maps are tried in order for NDCs the
chain misses.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from leader.data.tables import read_table
from leader.errors import LeaderError


def read_ndc2rxnorm(path: Path) -> dict[str, str]:
    """NDC -> RXCUI from the dict literal; empty values (unmapped) are left out."""
    if not path.exists():
        raise LeaderError(f"{path}: NDC -> RxNorm map not found (give --resources DIR)")
    try:
        raw = ast.literal_eval(path.read_text(encoding="utf-8"))
    except (ValueError, SyntaxError, UnicodeDecodeError) as exc:
        raise LeaderError(f"{path}: not a Python dict literal of NDC -> RXCUI ({exc})") from exc
    if not isinstance(raw, dict):
        raise LeaderError(f"{path}: expected a dict literal of NDC -> RXCUI")
    return {str(k): str(v) for k, v in raw.items() if str(v).strip()}


def read_rxcui2atc4(path: Path) -> dict[str, str]:
    """RXCUI -> ATC4, the first row of each RXCUI in file order."""
    frame = read_table(path, ["RXCUI", "ATC4"], text=["RXCUI", "ATC4"]).dropna()
    frame = frame.drop_duplicates("rxcui", keep="first")
    return dict(zip(frame["rxcui"], frame["atc4"], strict=True))


def read_ndc_map(path: Path) -> dict[str, str]:
    """An extra ``NDC,ATC4`` or ``NDC,ATC3`` map -> NDC -> ATC3 (first row per NDC)."""
    if not path.exists():
        raise LeaderError(f"{path}: NDC map not found")
    header = read_table(path, ["NDC"], optional=["ATC4", "ATC3"], text=["NDC", "ATC4", "ATC3"])
    column = "atc4" if "atc4" in header.columns else "atc3" if "atc3" in header.columns else None
    if column is None:
        raise LeaderError(
            f"{path}: column 'ATC4' or 'ATC3' missing (found: {', '.join(header.columns)})"
        )
    frame = header[["ndc", column]].dropna().drop_duplicates("ndc", keep="first")
    return dict(zip(frame["ndc"], frame[column].str.slice(0, 4), strict=True))


class DrugMapper:
    """NDC -> ATC3 through the default chain, then the extra maps in order."""

    def __init__(
        self,
        ndc2rxcui: dict[str, str],
        rxcui2atc4: dict[str, str],
        extra_maps: Sequence[dict[str, str]] = (),
    ) -> None:
        self.ndc2rxcui = ndc2rxcui
        self.rxcui2atc4 = rxcui2atc4
        self.extra_maps = list(extra_maps)

    @classmethod
    def from_resources(cls, resources: Path, extra: Sequence[Path] = ()) -> DrugMapper:
        return cls(
            read_ndc2rxnorm(resources / "ndc2rxnorm_mapping.txt"),
            read_rxcui2atc4(resources / "rxcui2atc4.csv"),
            [read_ndc_map(p) for p in extra],
        )

    def atc3(self, ndc: str) -> str | None:
        rxcui = self.ndc2rxcui.get(ndc)
        atc4 = self.rxcui2atc4.get(rxcui) if rxcui is not None else None
        if atc4:
            return atc4[:4]
        for mapping in self.extra_maps:
            if ndc in mapping:
                return mapping[ndc]
        return None

    def map_series(self, ndc: pd.Series) -> pd.Series:
        """Vectorised over the unique NDCs: a Series of ATC3 codes (NA where unmapped)."""
        codes, uniques = pd.factorize(ndc, use_na_sentinel=True)
        mapped = pd.array([self.atc3(str(u)) for u in uniques] + [None], dtype="string")
        # factorize's -1 (missing) picks the trailing None.
        return pd.Series(mapped[codes], index=ndc.index, dtype="string")


def read_atc_names(path: Path) -> dict[str, str]:
    """ATC code -> name (``atc_code,atc_name``); all-capital names are lower-cased."""
    frame = read_table(path, ["atc_code", "atc_name"], text=["atc_code", "atc_name"]).dropna()
    names = frame["atc_name"].map(lambda n: n.lower() if n.isupper() else n)
    return dict(zip(frame["atc_code"], names, strict=True))


def read_icd_names(path: Path, title: str = "short_title") -> dict[str, str]:
    """MIMIC-III D_ICD_* table -> ICD-9 code -> title."""
    frame = read_table(path, ["icd9_code", title], text=["icd9_code", title]).dropna()
    return dict(zip(frame["icd9_code"], frame[title], strict=True))
