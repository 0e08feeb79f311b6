"""Every private name of another library that gem-lightning relies on: one module per library.

Private names (a leading underscore, or a public attribute of a private class) change without
deprecation. Where a library offers a public way, the package uses it; what is left is listed here,
so that an upgrade shows what broke:

* :mod:`.lightning`, :mod:`.litdata`, :mod:`.litserve`, :mod:`.torch`, :mod:`.torchvision` each hold a ``PRIVATE_NAMES``
  tuple (every private class, method or attribute of that library the package imports, overrides,
  calls, reads or writes, with what it is relied on for), ``PARAMETERS`` (the parameters the package
  passes to, or takes in its overrides of, the listed functions) and small aliases and functions;
* only that module touches the names: the rest of the package uses its aliases and functions, or
  overrides a private method of a class it subclasses;
* ``pyproject.toml`` pins each such library below its next release that no one has read: before
  lifting a pin, read each listed name in the new release's source and check that it still means
  what the comment beside it says.

``tests/test_compat.py`` checks that each listed name exists in the installed library with the listed
parameters, that no other module touches a private name of any library, that every private method a
subclass overrides or inherits is listed, and that each pin is in ``pyproject.toml`` and in the
module's docstring. The modules import nothing from the rest of the package (the bottom layer).
"""
