import asyncpg


async def test_fixtures_start(fides_db, temporal_env, time_skipping_env):
    conn = await asyncpg.connect(fides_db)
    assert await conn.fetchval("select count(*) from customer") == 3
    await conn.close()
    assert temporal_env.client.namespace == "default"
