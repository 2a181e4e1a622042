"""Only the wheel's tag lives here (the rest is pyproject.toml): the package carries the C library
(libnavigen), so its wheel is for one platform but any Python 3 (ctypes, no extension module)."""
from setuptools import setup
from wheel.bdist_wheel import bdist_wheel


class PlatformWheel(bdist_wheel):
    def finalize_options(self):
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self):
        _, _, plat = super().get_tag()
        return "py3", "none", plat


setup(cmdclass={"bdist_wheel": PlatformWheel})
