"""Campaign plans: every trial's faults sampled up front, saved, and replayed exactly.

A plan file is JSON (``.json``: human-readable, one object per fault) or binary (any other
suffix, conventionally ``.npz``: numpy's zip of arrays, no pickle, the faults of all trials
as one set of columns with per-trial offsets). Both hold the sampling configuration, the
model's sha256 and the inputs per trial. :class:`CampaignPlan` and
:class:`~enpheeph_onnx.campaign.sampling.Sampler` share one interface, ``trial_numbers()``
and ``spec(trial)``, so the runner does not know which one it replays.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EnpheephError
from ..faults import Fault, parse_json
from ..faultset import FaultSet
from ..model import ModelSource, atomic_path, load_model, model_sha256
from ..sites import discover_sites
from .config import CampaignConfig
from .sampling import Sampler, Stratum, TrialSpec, allowed_elements, layer_order, select_sites

FORMAT = "enpheeph-onnx campaign plan"


@dataclass(frozen=True)
class CampaignPlan:
    """The sampled faults of a campaign, to replay exactly (``campaign --plan``)."""

    config: CampaignConfig
    model_sha256: str
    samples: int
    trials: tuple[TrialSpec, ...]
    ranks: dict[str, int] = field(default_factory=dict)
    """The rank of each site (so that a fault is written with one coordinate per dimension)."""

    def trial_numbers(self) -> list[int]:
        return [t.trial for t in self.trials]

    def spec(self, trial: int) -> TrialSpec:
        return self._by_number[trial]

    @cached_property
    def _by_number(self) -> dict[int, TrialSpec]:
        return {t.trial: t for t in self.trials}

    @property
    def faults(self) -> int:
        return sum(len(t.faults) for t in self.trials)

    def _header(self, version: int) -> dict[str, Any]:
        return {"format": FORMAT, "version": version, "config": self.config.to_json(),
                "model_sha256": self.model_sha256, "samples": self.samples,
                "ranks": dict(self.ranks)}

    def to_json(self) -> dict[str, Any]:
        return {**self._header(1), "trials": [
            {"trial": t.trial, "level": t.level, "rate": t.rate,
             "stratum": _stratum_json(t.stratum),
             "faults": [f.to_json() for f in t.faults.to_faults(self.ranks)]}
            for t in self.trials]}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the plan atomically: JSON for a ``.json`` path, else binary (``.npz``)."""
        p = Path(path)
        if p.suffix.lower() == ".json":
            with atomic_path(p) as tmp:
                tmp.write_text(json.dumps(self.to_json(), separators=(",", ":")))
            return
        joined = FaultSet.concat([t.faults for t in self.trials])
        header = {**self._header(2), "trials": [
            {"trial": t.trial, "level": t.level, "rate": t.rate,
             "stratum": _stratum_json(t.stratum)} for t in self.trials]}
        offsets = np.cumsum([0] + [len(t.faults) for t in self.trials]).astype(np.int64)
        with atomic_path(p) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, header=np.array(json.dumps(header)), offsets=offsets,
                                **joined.arrays("faults_"))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CampaignPlan:
        """Read a JSON or binary plan.

        Raises:
            EnpheephError: a missing, unreadable or malformed plan.
        """
        p = Path(path)
        try:
            raw = p.read_bytes()
        except OSError as e:
            raise EnpheephError(f"cannot read campaign plan {p}: {e.strerror}") from None
        if raw[:2] == b"PK":
            return cls._load_binary(p, raw)
        d = parse_json(raw, f"campaign plan {p} (neither a binary .npz plan nor JSON)")
        if isinstance(d, dict) and d.get("format") == FORMAT and d.get("version") != 1:
            raise EnpheephError(f"{p}: campaign plan version {d.get('version')!r} is not one "
                                "this version reads (1); write it again with "
                                "'enpheeph-onnx plan'")
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise EnpheephError(
                f"{p} is not a campaign plan (write one with 'enpheeph-onnx plan'); "
                "a single fault list goes to 'inject --plan'"
            )
        try:
            trials = tuple(TrialSpec(int(t["trial"]), int(t["level"]), t["rate"],
                                     _stratum(t.get("stratum")),
                                     FaultSet.from_faults(Fault.from_json(f)
                                                          for f in t["faults"]))
                           for t in d["trials"])
            return cls(CampaignConfig.from_json(d["config"]), str(d["model_sha256"]),
                       int(d["samples"]), trials, _ranks(d, trials))
        except (KeyError, TypeError, ValueError) as e:
            raise EnpheephError(f"campaign plan {p} is malformed ({e})") from None

    @classmethod
    def _load_binary(cls, p: Path, raw: bytes) -> CampaignPlan:
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            if "header" not in arrays:
                raise EnpheephError(f"{p} is not a campaign plan" + (
                    " but a fault set: apply it with 'inject --plan'" if "format" in arrays
                    else "") + "; write one with 'enpheeph-onnx plan'")
            header = json.loads(str(arrays["header"]))
            if header.get("format") != FORMAT or header.get("version") != 2:
                raise EnpheephError(f"{p}: not a campaign plan of this version (format "
                                    f"{header.get('format')!r}, version "
                                    f"{header.get('version')!r}); write one with "
                                    "'enpheeph-onnx plan'")
            joined = FaultSet.from_arrays(arrays, "faults_")
            offsets = arrays["offsets"].astype(np.int64)
            trials = tuple(
                TrialSpec(int(t["trial"]), int(t["level"]), t["rate"], _stratum(t["stratum"]),
                          joined.take(np.arange(offsets[i], offsets[i + 1])))
                for i, t in enumerate(header["trials"]))
            return cls(CampaignConfig.from_json(header["config"]), str(header["model_sha256"]),
                       int(header["samples"]), trials, _ranks(header, trials))
        except (KeyError, TypeError, ValueError, OSError, IndexError, EOFError,
                zipfile.BadZipFile, zlib.error) as e:
            raise EnpheephError(f"{p} is not a campaign plan, or it is damaged "
                                f"({type(e).__name__}: {e}); write one with 'enpheeph-onnx "
                                "plan' (a fault set .npz goes to 'inject --plan')") from None


def _ranks(header: dict[str, Any], trials: tuple[TrialSpec, ...]) -> dict[str, int]:
    """The header's site ranks, or (older plans) the width of each trial's index."""
    ranks = {str(k): int(v) for k, v in (header.get("ranks") or {}).items()}
    for t in trials:
        for name in t.faults.sites:
            ranks.setdefault(name, t.faults.index.shape[1])
    return ranks


def _stratum_json(s: Stratum | None) -> dict[str, Any] | None:
    return None if s is None else {"layer": s.layer, "bit": s.bit}


def _stratum(d: Any) -> Stratum | None:
    return None if d is None else Stratum(d.get("layer"), d.get("bit"))


def plan_campaign(model: ModelSource, cfg: CampaignConfig, samples: int) -> CampaignPlan:
    """Sample every trial's faults without running anything.

    Raises:
        EnpheephError: bad model or an empty site selection.
    """
    proto = load_model(model)
    sites = select_sites(discover_sites(proto), cfg)
    sampler = Sampler(sites, cfg, samples, allowed_elements(proto, sites, cfg.pruned_weights),
                      layer_order(proto, sites))
    return CampaignPlan(cfg, model_sha256(model), samples,
                        tuple(sampler.spec(t) for t in sampler.trial_numbers()), sampler.ranks)


__all__ = ["CampaignPlan", "plan_campaign"]
