"""The one step pyproject.toml cannot declare: generating the gRPC stubs into the package as it is
built, with generate_stubs.sh (protoc and grpc_python_plugin, Debian's protobuf-compiler-grpc)."""

import os
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildPyWithStubs(build_py):
    def run(self):
        super().run()
        subprocess.run([os.path.join(HERE, "generate_stubs.sh"), os.path.join(self.build_lib, "indexcache_client")],
                       check=True)


setup(cmdclass={"build_py": BuildPyWithStubs})
