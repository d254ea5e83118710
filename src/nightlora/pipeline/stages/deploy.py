"""B3.6 + B3.8 + B3.9: the adapter becomes a store version and goes live on the target.

Reads: <run>/adapter-<backend>/.  Writes: the store's next version (in the formats the
target serves, beside the trained one), its ``current`` pointer, the deploys table.
A new version that fails health is rolled back; the night then ends "rolled_back"
(the assistant answers with the version before) or fails when nothing answers.
"""

from __future__ import annotations

from nightlora.errors import ServerError
from nightlora.pipeline.night import Night
from nightlora.platform.notify import announce_back
from nightlora.targets.deploy import Outcome, deploy
from nightlora.train.convert import version_folder


def run(night: Night) -> str | None:
    r, target = night.result, night.deps.target
    train = r.train
    assert train is not None and train.metrics is not None and train.adapter_dir is not None
    folder = version_folder(train.adapter_dir, train.metrics.adapter_format, [target.adapter_format],
                            train.base_model, night.run.converted(target.adapter_format))
    version = night.store.add(folder, base_model=str(train.base_model), data_counts=r.export.counts,  # type: ignore[union-attr]
                              run_id=r.run_id, eval_score=r.evaluation.score if r.evaluation else None)
    outcome = r.deploy = deploy(night.store, target, version, log=night.log)
    night.server_at_risk = False  # the chain ended on what serves (or found nothing that answers)
    night.db.record_deploy(r.run_id, "deploy", outcome.outcome.value, requested=version.name, live=outcome.live,
                           detail=outcome.message())
    if night.paused:
        announce_back(night.deps.notifier, outcome.message(), night.app_name)
    if outcome.outcome in (Outcome.LIVE, Outcome.UNMANAGED):
        return None
    r.message = f"{version.name} was not deployed: {outcome.message()}"
    if not outcome.ok:
        raise ServerError(r.message)
    r.status, r.exit_code = "rolled_back", 0
    return r.status
