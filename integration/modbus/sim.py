#!/usr/bin/env python3
"""A Modbus TCP device for ferry's tests and benchmarks, served by pymodbus.

Holding registers 0..199 of unit 1 (any unit id answers):
  0-1  sequence number (u32, high word first): reads so far
  2    temperature, tenths of a degree Celsius (i16): 20.0 rising by 0.5
       each read and wrapping at 40.0
  3    relative humidity, tenths of a percent (u16): 480
  4    status bits (bit 0: alarm, set above 35.0)
  10.. writable setpoints (nothing changes them but writes)

With SIM_TRACE=FILE set, each read appends "SEQ WALL_TIME" to FILE (for
integration/bench/ingest.sh's poll-to-rule latency).

Every write is printed as `write ADDRESS VALUE...` on stdout (flushed), and
`listening PORT` once the server accepts connections.

    sim.py PORT
"""
import asyncio
import os
import sys
import time

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimData, SimDevice, DataType

reads = 0
trace = open(os.environ["SIM_TRACE"], "a", buffering=1) if os.environ.get("SIM_TRACE") else None


async def action(function_code, start_address, address, count, registers, set_values):
    """Runs on every request: reads see fresh values, writes are printed."""
    global reads
    if set_values is not None:
        print("write", address, *set_values, flush=True)
        return None
    if function_code in (3, 4):
        reads += 1
        temperature = 200 + (reads % 40) * 5
        base = 0 - start_address
        registers[base + 0] = (reads >> 16) & 0xFFFF
        registers[base + 1] = reads & 0xFFFF
        registers[base + 2] = temperature
        registers[base + 3] = 480
        registers[base + 4] = 1 if temperature > 350 else 0
        if trace:
            trace.write(f"{reads} {time.time()}\n")
    return None


async def main(port):
    device = SimDevice(
        id=0,
        simdata=[SimData(0, count=200, values=0, datatype=DataType.REGISTERS)],
        action=action,
    )
    server = ModbusTcpServer(device, address=("127.0.0.1", port))
    task = asyncio.create_task(server.serve_forever())
    # serve_forever binds first; give it a moment before announcing.
    for _ in range(100):
        await asyncio.sleep(0.02)
        if server.transport is not None:
            break
    print("listening", port, flush=True)
    await task


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
