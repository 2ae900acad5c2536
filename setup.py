"""checkpoint-edge: the software of a checkpoint QR-card scanner appliance (Raspberry Pi class)."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

# psycopg 3 with its own libpq where wheels exist (x86-64, aarch64); elsewhere (32-bit Pi OS) the
# pure-Python psycopg on Debian's libpq5 (installed with the postgresql package).
_WHEELS = ("x86_64", "aarch64", "AMD64")
SERVER = [
    "psycopg[binary]>=3.1; " + " or ".join(f"platform_machine == '{m}'" for m in _WHEELS),
    "psycopg>=3.1; " + " and ".join(f"platform_machine != '{m}'" for m in _WHEELS),
    "psycopg-pool>=3.2",
    # ISA-L's inflate opens batches in half zlib's time (sync/wire/batch.py; zlib where it has no wheel)
    "isal>=1.6; " + " or ".join(f"platform_machine == '{m}'" for m in _WHEELS),
    # uvicorn's HTTP parser in C (llhttp) for the server: about 1 µs less per entry than h11 (sync/server/limits.py)
    "httptools>=0.6",
]
# The central console (sync/server/console) and its opener: password hashing, second factor, pages,
# form uploads, spreadsheet export, the sealing key split into shares.
CONSOLE = [
    "argon2-cffi>=23.1",
    "pyotp>=2.9",
    "jinja2>=3.1",
    "python-multipart>=0.0.9",
    "xlsxwriter>=3.1",
    "pycryptodome>=3.20",
]

setup(
    name="checkpoint-edge",
    version="0.2.0",
    description="Offline verification and logging of signed personal QR cards at checkpoints",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["scanner", "scanner.*", "sync", "sync.*", "hardware", "hardware.*"]),
    # scanner/web: the kiosk screen and the status page (plain HTML, CSS and JavaScript, served by the API)
    package_data={"scanner.base": ["translations.toml"], "scanner.appliance": ["web/*.html", "web/*.css", "web/*.js"],
                  "sync.server.console": ["templates/*.html", "static/*.css"]},
    install_requires=[
        "cryptography>=42",
        "numpy>=1.26",
        "opencv-python-headless>=4.8",
        "pyzbar>=0.1.9",
        "zxing-cpp>=2.2",
        "segno>=1.6",
        "reedsolo>=1.7",  # Reed-Solomon with erasures: codes partly washed out by glare (hardware/erasure.py)
        "click>=8.1",
        "cbor2>=6.3",  # its compiled decoder reads card claims (scanner/cards/cbor.py keeps the rules)
        "msgspec>=0.18",  # batch rows decoded and type-checked in one pass (sync/wire/batch.py)
        "sqlite-utils>=4.0",  # Migrations (the entry log schema) arrived in 4.0
        "requests>=2.31",
        "starlette>=0.37",  # the reference sync server (sync/server), pure Python
        "uvicorn>=0.29",  # its HTTP server, without the [standard] extras (installs on a Pi)
        "gpiozero>=2.0",
        "lgpio>=0.2.2; sys_platform == 'linux'",  # gpiozero's pin factory on a Pi 5 (and 4)
        "pyserial>=3.5",  # serial / USB CDC-ACM QR readers
        "evdev>=1.6; sys_platform == 'linux'",  # USB keyboard-wedge QR readers (built from source: gcc, python3-dev)
        "zeroconf>=0.131",  # mDNS/DNS-SD: the gates of a site find each other on the LAN (sync/site)
    ],
    extras_require={
        "picamera": ["picamera2>=0.3.17"],
        "server": SERVER + CONSOLE,  # PostgreSQL (sync/server/postgres.py), the console and its opener
        "dev": [
            "pytest>=8",
            "hypothesis>=6.100",
            "selenium>=4.15",  # drives Debian's chromium + chromedriver for the kiosk page's tests (no downloads)
            "inotify_simple>=1.3",  # counts the sync state file's writes in tests/test_sync_faults.py
            # the code checks tests/test_code_quality.py runs (settings: pyproject.toml, .importlinter);
            # exact versions, so that a new release's new rules cannot turn CI red
            "ruff==0.17.6",
            "mypy==2.4.1",
            "import-linter==2.17",
            "types-pyserial==3.5.0.20261122",
            *SERVER,  # the server tests run on SQLite and PostgreSQL
            *CONSOLE,
            "openpyxl>=3.1",  # the console's tests open its XLSX exports as a spreadsheet program would
        ],
    },
    entry_points={"console_scripts": ["checkpoint=scanner.cli.main:main"]},
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Operating System :: POSIX :: Linux",
        "Topic :: Security :: Cryptography",
    ],
)
