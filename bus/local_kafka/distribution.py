"""The pinned Apache Kafka release for the local broker: finding Java, fetching the jars with Maven.

The pin lives in `deploy/kafka/pom.xml` (copied into the wheel), so the version is declared once,
next to the reason it was chosen.
"""

import os
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from bus.errors import LocalKafkaError, ToolMissingError

MIN_JAVA = 17
_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}
_COMPLETE_MARKER = ".complete"
_USE_EXISTING = "or point bus at an existing cluster with KAFKA_BOOTSTRAP_SERVERS=host:port"


def deploy_dir() -> Path:
    """The folder holding pom.xml and log4j2.properties: the repository's, else the wheel's copy."""
    in_repo = Path(__file__).resolve().parents[2] / "deploy" / "kafka"
    if (in_repo / "pom.xml").is_file():
        return in_repo
    return Path(__file__).resolve().parent / "deploy"


def pinned_kafka_version(pom: Path) -> str:
    # Our own pom.xml, shipped with the package: not untrusted input.
    root = ET.parse(pom).getroot()  # noqa: S314
    version = root.find("m:properties/m:kafka.version", _POM_NS)
    if version is None or not version.text:
        raise LocalKafkaError(f"{pom} declares no <kafka.version> property; restore it")
    return version.text.strip()


def find_java() -> Path:
    """The `java` of JAVA_HOME, else of PATH, checked to be at least Java 17."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    if candidate is None or not candidate.is_file():
        found = shutil.which("java")
        candidate = Path(found) if found else None
    if candidate is None:
        raise ToolMissingError(
            f"Java {MIN_JAVA}+ is needed to run the local Kafka broker and none was found on PATH "
            f"or in JAVA_HOME; install a JDK {MIN_JAVA} or newer (e.g. `apt-get install "
            f"openjdk-17-jre-headless`), {_USE_EXISTING}"
        )
    result = subprocess.run(
        [str(candidate), "-version"], capture_output=True, text=True, check=False
    )
    major = _java_major(result.stderr + result.stdout)
    if major is None or major < MIN_JAVA:
        raise ToolMissingError(
            f"{candidate} is Java {major or 'of unknown version'}, "
            f"but Kafka needs Java {MIN_JAVA}+; "
            f"set JAVA_HOME to a JDK {MIN_JAVA} or newer, {_USE_EXISTING}"
        )
    return candidate


def _java_major(version_output: str) -> int | None:
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if match is None:
        return None
    first = int(match.group(1))
    # Java 8 and older report themselves as "1.8.0_..."
    return int(match.group(2) or 0) if first == 1 else first


@dataclass(frozen=True)
class KafkaDistribution:
    """One pinned Kafka release, cached as a folder of jars under `cache_dir`."""

    cache_dir: Path
    source: Path

    @classmethod
    def pinned(cls, cache_dir: Path) -> "KafkaDistribution":
        return cls(cache_dir=cache_dir, source=deploy_dir())

    @cached_property
    def version(self) -> str:
        return pinned_kafka_version(self.source / "pom.xml")

    @property
    def libs_dir(self) -> Path:
        return self.cache_dir / f"kafka-{self.version}" / "libs"

    @property
    def log4j_config(self) -> Path:
        return self.source / "log4j2.properties"

    def is_fetched(self) -> bool:
        return (self.libs_dir / _COMPLETE_MARKER).is_file()

    def ensure(self) -> Path:
        """The jars' folder, fetched from Maven Central first if it is not cached yet."""
        if not self.is_fetched():
            self.fetch()
        return self.libs_dir

    def fetch(self) -> None:
        mvn = shutil.which("mvn")
        if mvn is None:
            raise ToolMissingError(
                f"Maven is needed once to fetch Apache Kafka {self.version} from Maven Central and "
                "was not found on PATH; install it (e.g. `apt-get install maven`), "
                f"{_USE_EXISTING}"
            )
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # Copy into a scratch folder and rename it into place, so an interrupted fetch never
        # leaves a half-filled folder that looks complete.
        with tempfile.TemporaryDirectory(dir=self.cache_dir, prefix=".fetch-") as scratch:
            staged = Path(scratch) / "libs"
            command = [
                mvn,
                "--batch-mode",
                "--quiet",
                "--file",
                str(self.source / "pom.xml"),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={staged}",
            ]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0 or not any(staged.glob("kafka_2.13-*.jar")):
                tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
                raise LocalKafkaError(
                    f"Maven could not fetch Apache Kafka {self.version} "
                    f"(exit {result.returncode}); "
                    f"check access to Maven Central, {_USE_EXISTING}\n{tail}"
                )
            (staged / _COMPLETE_MARKER).write_text(self.version + "\n")
            if self.libs_dir.exists():
                shutil.rmtree(self.libs_dir)
            self.libs_dir.parent.mkdir(parents=True, exist_ok=True)
            staged.rename(self.libs_dir)
