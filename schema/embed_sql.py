"""Turn an SQL file into a C translation unit defining one char array.

Usage: embed_sql.py SRC DST [SYMBOL]; SYMBOL defaults to hp_schema_sql_text.
Run by meson at build time so that schema.sql (and indexes.sql) stay the one source
of the schema."""
import sys


def main(src: str, dst: str, symbol: str = "hp_schema_sql_text") -> None:
    data = open(src, "rb").read()
    body = ",".join(str(b) for b in data)
    with open(dst, "w") as out:
        out.write("/* Generated from schema/%s by embed_sql.py; do not edit. */\n"
                  % src.replace("\\", "/").rsplit("/", 1)[-1])
        out.write("const char %s[] = {%s,0};\n" % (symbol, body))


if __name__ == "__main__":
    main(*sys.argv[1:4])
