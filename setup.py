"""checkpoint-edge: the software of a checkpoint QR-card scanner appliance (Raspberry Pi class)."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="checkpoint-edge",
    version="0.1.0",
    description="Offline verification and logging of signed personal QR cards at checkpoints",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["scanner", "scanner.*", "sync", "sync.*", "hardware", "hardware.*"]),
    package_data={"scanner": ["translations.toml"]},
    install_requires=[
        "cryptography>=42",
        "numpy>=1.26",
        "opencv-python-headless>=4.8",
        "pyzbar>=0.1.9",
        "zxing-cpp>=2.2",
        "segno>=1.6",
        "click>=8.1",
        "sqlite-utils>=3.36",
        "requests>=2.31",
        "gpiozero>=2.0",
    ],
    extras_require={
        "picamera": ["picamera2>=0.3.17"],
        "dev": [
            "pytest>=8",
            "hypothesis>=6.100",
            "cbor2>=5.6",
        ],
    },
    entry_points={"console_scripts": ["checkpoint=scanner.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Operating System :: POSIX :: Linux",
        "Topic :: Security :: Cryptography",
    ],
)
