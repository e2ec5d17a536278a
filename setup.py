import os

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))
version = {}
with open(os.path.join(here, "dispycos", "_version.py")) as f:
    exec(f.read(), version)

setup(
    name="dispycos",
    version=version["__version__"],
    description="Distributed communicating tasks on Twisted: a Twisted-native re-creation of pycos's dispycos",
    long_description=open(os.path.join(here, "README.rst")).read(),
    long_description_content_type="text/x-rst",
    python_requires=">=3.11",
    packages=find_packages(include=["dispycos", "dispycos.*"]) + ["twisted.plugins"],
    package_data={"dispycos": ["web/static/*", "data/*"]},
    include_package_data=False,
    zip_safe=False,
    install_requires=["twisted>=24.7", "pyopenssl", "service-identity", "psutil", "cloudpickle>=3"],
    extras_require={
        # The joblib backend "dispycos" (dispycos.joblib): pip install dispycos[joblib]
        "joblib": ["joblib>=1.3"],
        # run_results/map(progress=True) draw a tqdm bar when it is installed.
        "progress": ["tqdm"],
        # /metrics (--metrics_port, Scheduler(metrics_port=)): imported only by a process that serves it.
        "metrics": ["prometheus_client"],
        # The blocking API's tests drive it through scikit-learn (joblib) and a real Jupyter kernel.
        "test": ["pytest", "pytest-twisted", "hypothesis", "playwright", "tqdm", "joblib>=1.3", "scikit-learn",
                 "nbclient", "nbformat", "ipykernel", "jupyter_client", "prometheus_client"],
    },
    entry_points={
        "console_scripts": [
            "dispycosnode = dispycos.scripts:node_main",
            "dispycos = dispycos.scripts:scheduler_main",
        ]
    },
)
