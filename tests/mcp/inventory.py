"""An MCP server for the flows tests, written with the official Python SDK (`mcp`):
one tool, `stock`, over streamable HTTP at http://127.0.0.1:PORT/mcp.

    python3 tests/mcp/inventory.py PORT
"""
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("inventory")


@server.tool()
def stock(item: str) -> str:
    """How many of an item are in stock."""
    return f"{item}: 12 in stock"


server.run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
