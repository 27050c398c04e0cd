"""Early stopping: after each epoch, has the monitored metric stopped improving?

Keras's rule by default (the best moves only on an improvement > min_delta); `best = "running"`
is scikit-learn's tol / n_iter_no_change rule. The best value, its epoch and the count of bad
epochs live in the run's `State` (so they are checkpointed); the best weights, when they are to be
restored at the end, in `best_theta` (checkpointed as `early_stopping.best_theta`).
"""

import numpy as np

from .config import EarlyStoppingConfig
from .state import State


def metric_is_loss(monitor: str) -> bool:
    return monitor.endswith("loss")


class EarlyStopping:
    def __init__(self, config: EarlyStoppingConfig):
        self.config = config
        self.best_theta: np.ndarray | None = None

    def update(self, metrics: dict, state: State, theta: np.ndarray) -> str | None:
        """Record epoch `state.epoch`'s metrics; a sentence saying why when training should stop."""
        es, st = self.config, state
        if not es.patience:
            return None
        key = es.monitor if es.monitor in metrics else es.monitor.replace("train_", "")
        value = metrics[key]
        sign = 1.0 if metric_is_loss(es.monitor) else -1.0  # compared as "lower is better"
        v, best = sign * value, None if st.best is None else sign * st.best
        if es.best == "running":  # scikit-learn's tol rule (its comparisons are not strict)
            improved = best is None or v <= best - es.min_delta
            new_best = best is None or v < best
        else:
            improved = new_best = best is None or v < best - es.min_delta
        if new_best:
            st.best, st.best_epoch = value, st.epoch + 1
            if es.restore_best:
                self.best_theta = theta.copy()
        st.bad_epochs = 0 if improved else st.bad_epochs + 1
        if st.bad_epochs >= es.patience:
            return (f"early stopping after epoch {st.epoch + 1}: {es.monitor} has not improved "
                    f"for {es.patience} epochs (best {st.best:.4g} at epoch {st.best_epoch})")
        return None

    def final_theta(self) -> np.ndarray | None:
        """The weights to keep at the end instead of the last ones (None: keep the last)."""
        if self.config.patience and self.config.restore_best and self.best_theta is not None:
            return self.best_theta.copy()
        return None
