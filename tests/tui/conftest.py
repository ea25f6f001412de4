"""Wallet tests run Textual on asyncio, so they are plain ``def`` tests calling ``asyncio.run``
(pytest-trio's trio_mode would run an ``async def`` test under trio, which Textual cannot use)."""
