"""Drop-in entry points that mirror other libraries' APIs on landscape_fast's engine.

- :mod:`landscape_fast.compat.pyhessian`: ``hessian(model, criterion, data=..., ...)`` with
  PyHessian's ``.eigenvalues()``, ``.trace()`` and ``.density()``.
"""
