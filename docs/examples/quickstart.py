"""Ten callers ask for the same slow thing at once; the device runs once."""

import trio

import trio_persist


async def fetch_profile(base, request):  # the device: any async function
    await trio.sleep(1)  # a slow backend call
    return {"user": request, "loaded_from": base}


async def main():
    async with trio_persist.open_persist(fetch_profile) as persist:
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(persist.resolve, "db", "alice")
        print(persist.statistics())  # executions=1, deduplicated=9


if __name__ == "__main__":
    trio.run(main)
