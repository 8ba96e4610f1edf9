"""Fault-injection campaigns: configuration, sampling, plans, outcomes and the runner.

A campaign runs the golden pass once, then ``trials`` trials at each fault-rate level (and
each stratum of a stratified campaign). See :mod:`.sampling` for how faults are drawn,
:mod:`.outcomes` for how each (trial, input) pair is judged and :mod:`enpheeph_onnx.summary`
for the trial-level statistics.

======================  =====================================================
module                  holds
======================  =====================================================
``config``              :class:`CampaignConfig`, site selection, rates
``data``                :class:`Dataset`, ``.npz`` loading, data hash
``sampling``            :class:`Sampler` (columnar fault sets), strata
``plan``                :class:`CampaignPlan` (JSON / binary), ``plan_campaign``
``outcomes``            :class:`Outcome`, ``classify``, ``correct``
``runner``              ``run_campaign``, :class:`CampaignResult`, ``load_summary``
======================  =====================================================
"""

from .config import (
    CampaignConfig,
    CountMode,
    SiteSelection,
    ValueDistribution,
    parse_rates,
    parse_steps,
)
from .data import Dataset, data_sha256, input_names, load_dataset
from .outcomes import OUTCOMES, Outcome, classify, correct
from .plan import CampaignPlan, plan_campaign
from .runner import CampaignResult, TrialSource, load_meta, load_summary, run_campaign
from .sampling import (
    Sampler,
    Stratum,
    TrialSpec,
    allowed_elements,
    fault_population,
    layer_order,
    sample_trial,
    select_sites,
    trial_rng,
    trials_for_margin,
)

__all__ = ["OUTCOMES", "CampaignConfig", "CampaignPlan", "CampaignResult", "CountMode",
           "Dataset", "Outcome", "Sampler", "SiteSelection", "Stratum", "TrialSource",
           "TrialSpec", "ValueDistribution", "allowed_elements", "classify", "correct",
           "data_sha256", "fault_population", "input_names", "layer_order", "load_dataset",
           "load_meta", "load_summary", "parse_rates", "parse_steps", "plan_campaign",
           "run_campaign", "sample_trial", "select_sites", "trial_rng", "trials_for_margin"]
