"""The project's partitioner is Kafka's default: murmur2 as the Java client computes it."""

from __future__ import annotations

import pytest

from streamml.partitioner import murmur2, partition_for


@pytest.mark.parametrize(
    ("key", "expected"),
    [  # org.apache.kafka.common.utils.UtilsTest.testMurmur2
        ("21", -973932308),
        ("foobar", -790332482),
        ("a-little-bit-long-string", -985981536),
        ("a-little-bit-longer-string", -1486304829),
        ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        ("abc", 479470107),
    ],
)
def test_murmur2_equals_the_java_clients(key: str, expected: int) -> None:
    assert murmur2(key.encode()) == expected


def test_partition_is_the_positive_hash_modulo_the_partitions() -> None:
    assert partition_for(b"foobar", 4) == (-790332482 & 0x7FFFFFFF) % 4
    assert {partition_for(f"card-{i}".encode(), 4) for i in range(100)} == {0, 1, 2, 3}
