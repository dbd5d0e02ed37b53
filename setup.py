"""The extension rbn._rbn is built by the project's CMake (python/CMakeLists.txt), not by
setuptools: build_ext configures a build directory (RBN_BUILD_DIR, or one under setuptools'
build_temp), builds the `_rbn` target there and copies the module into the package. With
RBN_BUILD_DIR set to an existing build (e.g. build/), an up-to-date extension is reused."""
import glob
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        build_dir = os.environ.get("RBN_BUILD_DIR") or os.path.join(os.path.abspath(self.build_temp), "cmake")
        build_dir = os.path.abspath(build_dir)
        if not os.path.exists(os.path.join(build_dir, "CMakeCache.txt")):
            cmd = ["cmake", "-S", ROOT, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release",
                   f"-DPython3_EXECUTABLE={sys.executable}", "-DRBN_TESTS=OFF", "-DRBN_BENCH=OFF",
                   "-DRBN_MPI=OFF"]
            if shutil.which("ninja"):
                cmd += ["-G", "Ninja"]
            subprocess.check_call(cmd)
        subprocess.check_call(["cmake", "--build", build_dir, "--target", "_rbn", "-j",
                               str(os.cpu_count() or 1)])
        built = glob.glob(os.path.join(build_dir, "python", "rbn", "_rbn*.so"))
        if len(built) != 1:
            raise RuntimeError(f"rbn: expected one _rbn*.so in {build_dir}/python/rbn, found {built}")
        out = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        shutil.copyfile(built[0], out)


setup(
    packages=["rbn"],
    package_dir={"": "python"},
    ext_modules=[Extension("rbn._rbn", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    options={"build": {"build_base": "build-pip"}},
)
