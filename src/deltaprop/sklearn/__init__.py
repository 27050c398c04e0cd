"""scikit-learn estimators that train with deltaprop: `MLPClassifier` and `MLPRegressor`.

    from deltaprop.sklearn import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(100,), max_iter=50, random_state=0).fit(X, y)
    clf.predict(X); clf.predict_proba(X); clf.score(X, y)
    clf.save("digits.safetensors")                 # `deltaprop evaluate digits.safetensors ...` opens it
    clf = MLPClassifier.load("runs/fm")             # a CLI-trained model, ready to predict

The parameters mirror `sklearn.neural_network.MLPClassifier/MLPRegressor` where the meaning is the
same; they become a deltaprop `Config`, and `fit` runs `training.trainer.Trainer` without a run
directory, on the arrays, through the same prepare / engine / kernels as `deltaprop train`.

Mappings worth knowing:
- `init="glorot_sklearn"` (the default): sklearn's initialisation draw for draw (Glorot-uniform
  weights and biases from `RandomState(random_state)`), so equal parameters start alike.
- `sample_weight`: sklearn's definition, each minibatch's loss `sum(w * loss) / sum(w)`; `alpha`
  then becomes `weight_decay = alpha / (batch_size * mean(w))` (sklearn's `alpha / sum(w)` for a
  full batch).
- `alpha` (sklearn: L2 penalty `alpha/2 * ||W||^2` per minibatch, divided by the batch size) becomes
  `optimizer.weight_decay = alpha / batch_size`, which gives the same gradient term; deltaprop's
  optimizers decay the biases too, and adamw applies it decoupled (torch's AdamW rule).
- `tol` / `n_iter_no_change` are sklearn's rule (`early_stopping.best = "running"`, patience
  `n_iter_no_change + 1`, min_delta `tol`) on the training loss, or with `early_stopping=True` on
  the validation accuracy (classifier) / R^2 (regressor), restoring the best weights at the end.
- `loss_curve_` is the mean training loss per epoch without the L2 term (sklearn adds it).
- Adam's `epsilon` is added after the bias correction (torch's rule, sklearn adds it before).
- Binary problems use two softmax outputs (sklearn: one logistic unit); `predict_proba` is the same.
- Inputs are not scaled (as in sklearn): put a `StandardScaler` in front.
"""

from ._estimators import MLPClassifier, MLPRegressor, expected_failed_checks, load

__all__ = ["MLPClassifier", "MLPRegressor", "expected_failed_checks", "load"]

# Pickles and reprs name the public module, not the private one the classes are defined in.
for _cls in (MLPClassifier, MLPRegressor):
    _cls.__module__ = __name__
