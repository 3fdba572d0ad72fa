"""Linear heads on CNN codes: softmax regression, linear SVM, and the choice of C.

>>> from headstart.heads import SoftmaxRegression, sweep_C
"""

from headstart.heads.select import SweepResult, cross_val_sweep, sweep_C
from headstart.heads.softmax import SoftmaxRegression
from headstart.heads.svm import LinearSVM

__all__ = ["LinearSVM", "SoftmaxRegression", "SweepResult", "cross_val_sweep", "sweep_C"]
