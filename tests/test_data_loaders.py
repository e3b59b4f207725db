"""MovieLens and CSV readers, and load_dataset, on small files written to tmp_path."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest

from dpr.data import (
    FORMATS,
    load_dataset,
    read_csv_pair,
    read_movielens_1m,
    read_movielens_100k,
)
from dpr.data.s3rec import read_s3rec

MOVIES_1M = [
    "1::Toy Story (1995)::Animation|Children's|Comedy",
    "2::Misérables, Les (1995)::Drama|Musical",
    "3::Alien (1979)::Horror|Sci-Fi",
]
RATINGS_1M = [
    "1::1::5::978300760",
    "1::2::3::978302109",
    "2::3::4::978301968",
]


def write(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def ml1m(root: Path, ratings: list[str] | None = RATINGS_1M,
         movies: list[str] = MOVIES_1M) -> Path:
    if ratings is not None:
        write(root / "ratings.dat", ratings)
    write(root / "movies.dat", movies, encoding="latin-1")
    return root


# --- ML-1M -------------------------------------------------------------------------------

def test_ml1m_reads_double_colon_files(tmp_path: Path) -> None:
    interactions, metadata = read_movielens_1m(ml1m(tmp_path))
    assert interactions.users.tolist() == [1, 1, 2]
    assert interactions.items.tolist() == [1, 2, 3]
    assert interactions.ratings.tolist() == [5.0, 3.0, 4.0]
    assert interactions.timestamps.tolist() == [978300760, 978302109, 978301968]
    assert interactions.users.dtype == np.int64 and interactions.items.dtype == np.int64
    assert metadata.ids == [1, 2, 3]
    assert all(type(i) is int for i in metadata.ids)
    assert metadata.titles[1] == "Misérables, Les (1995)"  # latin-1 decoded
    assert metadata.attributes["genre"][0] == ("Animation", "Children's", "Comedy")
    assert metadata.attributes["genre"][2] == ("Horror", "Sci-Fi")
    assert metadata.attributes["decade"] == [("1990s",), ("1990s",), ("1970s",)]


def test_ml1m_decade_from_the_title_year(tmp_path: Path) -> None:
    movies = ["1::Metropolis (1927)::Sci-Fi", "2::Shoah (1985-1986)::Documentary",
              "3::No Year At All::Drama", "4::1984 (1984)::Drama"]
    _, metadata = read_movielens_1m(ml1m(tmp_path, movies=movies))
    assert metadata.attributes["decade"] == [("1920s",), ("1980s",), (), ("1980s",)]
    dataset = load_dataset(ml1m(tmp_path / "b", ratings=[f"{u}::{i}::5::{u * 10 + i}"
                                                        for u in (1, 2) for i in (1, 2, 3)],
                                movies=movies), "movielens-1m", k_core=1)
    assert dataset.report["items_without_decade"] == 1
    assert dataset.report["items_without_genre"] == 0


def test_ml1m_latin1_bytes_on_disk(tmp_path: Path) -> None:
    ml1m(tmp_path)
    assert b"Mis\xe9rables" in (tmp_path / "movies.dat").read_bytes()


def test_ml1m_csv_fallback_with_missing_timestamps(tmp_path: Path) -> None:
    ml1m(tmp_path, ratings=None)
    text = ("user_id,movie_id,rating,timestamp,ts_sources\n"
            "1,1,5,978300760,AFMNV\n"
            "1,2,3,,\n"
            "2,3,4,978301968,A\n")
    (tmp_path / "ratings_reconstructed.csv.gz").write_bytes(gzip.compress(text.encode()))
    interactions, _ = read_movielens_1m(tmp_path)
    assert interactions.users.tolist() == [1, 1, 2]
    assert interactions.items.tolist() == [1, 2, 3]
    assert interactions.ratings.tolist() == [5.0, 3.0, 4.0]
    assert interactions.timestamps[0] == 978300760
    assert np.isnan(interactions.timestamps[1])


def test_ml1m_plain_csv_with_short_names(tmp_path: Path) -> None:
    ml1m(tmp_path, ratings=None)
    write(tmp_path / "ratings.csv", ["user,item,rating,timestamp", "7,3,2,10", "7,1,5,11"])
    interactions, _ = read_movielens_1m(tmp_path)
    assert interactions.users.tolist() == [7, 7]
    assert interactions.items.tolist() == [3, 1]


def test_ml1m_prefers_ratings_dat(tmp_path: Path) -> None:
    ml1m(tmp_path)
    write(tmp_path / "ratings.csv", ["user,item,rating,timestamp", "9,9,1,1"])
    interactions, _ = read_movielens_1m(tmp_path)
    assert interactions.users.tolist() == [1, 1, 2]


def test_ml1m_missing_files(tmp_path: Path) -> None:
    ml1m(tmp_path, ratings=None)
    with pytest.raises(FileNotFoundError, match="ratings"):
        read_movielens_1m(tmp_path)
    other = tmp_path / "other"
    write(other / "ratings.dat", RATINGS_1M)
    with pytest.raises(FileNotFoundError, match=r"movies\.dat"):
        read_movielens_1m(other)


@pytest.mark.parametrize("bad", [
    "2::3::4",                  # too few fields
    "2::3::4::5::6",            # too many fields
    "x::3::4::978301968",       # user id not a number
    "2::3.5::4::978301968",     # item id not an integer
    "2::3::four::978301968",    # rating not a number
    "2::3::4::yesterday",       # timestamp not a number
    "2::3::4::",                # timestamp missing
    "2::3::nan::978301968",     # rating not finite
])
def test_ml1m_malformed_line_names_file_and_line(tmp_path: Path, bad: str) -> None:
    ml1m(tmp_path, ratings=[RATINGS_1M[0], RATINGS_1M[1], bad])
    path = tmp_path / "ratings.dat"
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 3:")):
        read_movielens_1m(tmp_path)


def test_ml1m_blank_lines_skipped_and_line_numbers_kept(tmp_path: Path) -> None:
    ml1m(tmp_path, ratings=[RATINGS_1M[0], "", RATINGS_1M[1], "", "1::x::3::4"])
    with pytest.raises(ValueError, match=r"line 5\b"):
        read_movielens_1m(tmp_path)
    ml1m(tmp_path, ratings=["", *RATINGS_1M, "", ""])
    interactions, _ = read_movielens_1m(tmp_path)
    assert len(interactions) == 3


def test_ml1m_windows_line_endings(tmp_path: Path) -> None:
    ml1m(tmp_path)
    (tmp_path / "ratings.dat").write_bytes("\r\n".join(RATINGS_1M).encode() + b"\r\n")
    interactions, _ = read_movielens_1m(tmp_path)
    assert interactions.timestamps.tolist() == [978300760, 978302109, 978301968]


def test_ml1m_csv_malformed_line(tmp_path: Path) -> None:
    ml1m(tmp_path, ratings=None)
    write(tmp_path / "ratings.csv", ["user_id,movie_id,rating,timestamp", "1,1,5,1", "1,2,x,2"])
    with pytest.raises(ValueError, match=r"ratings\.csv, line 3\b.*rating"):
        read_movielens_1m(tmp_path)


def test_ml1m_movies_malformed_and_duplicate(tmp_path: Path) -> None:
    ml1m(tmp_path, movies=[MOVIES_1M[0], "2::No genres"])
    with pytest.raises(ValueError, match=r"movies\.dat, line 2\b"):
        read_movielens_1m(tmp_path)
    ml1m(tmp_path, movies=[*MOVIES_1M, "1::Toy Story again (1999)::Comedy"])
    with pytest.raises(ValueError, match=r"line 4\b.*duplicate"):
        read_movielens_1m(tmp_path)


# --- ML-100K -------------------------------------------------------------------------------

GENRES_100K = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
               "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
               "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def u_item_line(item: int, title: str, genres: list[str]) -> str:
    flags = ["1" if g in genres else "0" for g in GENRES_100K]
    return "|".join([str(item), title, "01-Jan-1995", "", "http://x", *flags])


def ml100k(root: Path, data: list[str] | None = None, items: list[str] | None = None) -> Path:
    write(root / "u.genre", [f"{g}|{i}" for i, g in enumerate(GENRES_100K)] + [""])
    write(root / "u.data", data or ["196\t242\t3\t881250949", "186\t302\t3\t891717742",
                                    "196\t302\t5\t881250950"])
    write(root / "u.item", items or [
        u_item_line(242, "Kolya (1996)", ["Comedy"]),
        u_item_line(302, "L.A. Confidential (1997)", ["Crime", "Film-Noir", "Mystery"]),
        u_item_line(267, "unknown", ["unknown"]),
        u_item_line(1, "Café au Lait (1993)", ["Comedy", "Romance"]),
    ], encoding="latin-1")
    return root


def test_ml100k_reads_files(tmp_path: Path) -> None:
    interactions, metadata = read_movielens_100k(ml100k(tmp_path))
    assert interactions.users.tolist() == [196, 186, 196]
    assert interactions.items.tolist() == [242, 302, 302]
    assert interactions.ratings.tolist() == [3.0, 3.0, 5.0]
    assert interactions.timestamps.tolist() == [881250949, 891717742, 881250950]
    assert metadata.ids == [242, 302, 267, 1]
    genre = metadata.attributes["genre"]
    assert genre[0] == ("Comedy",)
    assert genre[1] == ("Crime", "Film-Noir", "Mystery")
    assert genre[2] == ("unknown",)
    assert metadata.titles[3] == "Café au Lait (1993)"
    # From the release date (every line above has 01-Jan-1995), not the title's year.
    assert metadata.attributes["decade"] == [("1990s",)] * 4


def test_ml100k_decade_falls_back_to_the_title_then_to_none(tmp_path: Path) -> None:
    no_date = u_item_line(5, "Metropolis (1927)", ["Sci-Fi"]).replace("01-Jan-1995", "")
    neither = u_item_line(6, "unknown", ["unknown"]).replace("01-Jan-1995", "")
    dated = u_item_line(7, "Some Film", ["Drama"]).replace("01-Jan-1995", "12-Mar-1968")
    _, metadata = read_movielens_100k(ml100k(tmp_path, items=[no_date, neither, dated]))
    assert metadata.attributes["decade"] == [("1920s",), (), ("1960s",)]


def test_ml100k_malformed_lines(tmp_path: Path) -> None:
    ml100k(tmp_path, data=["196\t242\t3\t881250949", "186 302 3 891717742"])
    with pytest.raises(ValueError, match=r"u\.data, line 2\b"):
        read_movielens_100k(tmp_path)
    bad_flag = u_item_line(5, "Five (1995)", ["Drama"]).replace("|1|", "|2|")
    ml100k(tmp_path, items=[u_item_line(242, "Kolya (1996)", ["Comedy"]), bad_flag])
    with pytest.raises(ValueError, match=r"u\.item, line 2\b.*0 or 1"):
        read_movielens_100k(tmp_path)
    ml100k(tmp_path, items=[u_item_line(242, "Kolya (1996)", ["Comedy"]) + "|0"])
    with pytest.raises(ValueError, match=r"u\.item, line 1\b.*24 fields"):
        read_movielens_100k(tmp_path)


def test_ml100k_missing_file(tmp_path: Path) -> None:
    ml100k(tmp_path)
    (tmp_path / "u.genre").unlink()
    with pytest.raises(FileNotFoundError, match=r"u\.genre"):
        read_movielens_100k(tmp_path)


# --- CSV pair ------------------------------------------------------------------------------

def csv_pair(root: Path, interactions: list[str], items: list[str]) -> tuple[Path, Path]:
    return write(root / "interactions.csv", interactions), write(root / "items.csv", items)


def test_csv_pair_string_ids_quotes_and_genres(tmp_path: Path) -> None:
    paths = csv_pair(tmp_path,
                     ["user,item,rating,timestamp", "alice,m1,4.5,100", "bob,m2,,101"],
                     ["item,title,genre", 'm1,"Heat, Part One (1995)",Action|Crime',
                      "m2,Clueless (1995),Comedy| Romance |", "m3,Empty (2000),"])
    interactions, metadata = read_csv_pair(*paths)
    assert interactions.users.tolist() == ["alice", "bob"]
    assert interactions.items.tolist() == ["m1", "m2"]
    assert interactions.ratings[0] == 4.5 and np.isnan(interactions.ratings[1])
    assert metadata.ids == ["m1", "m2", "m3"]
    assert metadata.titles[0] == "Heat, Part One (1995)"
    assert metadata.attributes["genre"] == [("Action", "Crime"), ("Comedy", "Romance"), ()]


def test_csv_pair_integer_ids_consistent_between_files(tmp_path: Path) -> None:
    paths = csv_pair(tmp_path, ["user_id,item_id", "1,10", "2,20"],
                     ["item_id,title,genres", "10,Ten,Drama", "20,Twenty,Drama"])
    interactions, metadata = read_csv_pair(*paths)
    assert interactions.users.tolist() == [1, 2] and interactions.users.dtype == np.int64
    assert interactions.items.tolist() == [10, 20]
    assert metadata.ids == [10, 20]
    # One non-integer item id anywhere keeps every item id a string, in both files.
    paths = csv_pair(tmp_path, ["user,item", "1,10", "2,20"],
                     ["item,title,genre", "10,Ten,Drama", "20,Twenty,Drama", "x7,Odd,Drama"])
    interactions, metadata = read_csv_pair(*paths)
    assert interactions.items.tolist() == ["10", "20"]
    assert metadata.ids == ["10", "20", "x7"]
    assert interactions.users.tolist() == [1, 2]
    # Leading zeros are not plain integers: "007" stays "007".
    paths = csv_pair(tmp_path, ["user,item", "1,007"], ["item,title,genre", "007,Bond,Action"])
    interactions, metadata = read_csv_pair(*paths)
    assert metadata.ids == ["007"] and interactions.items.tolist() == ["007"]


def test_csv_pair_timestamps(tmp_path: Path) -> None:
    items = ["item,title,genre", "a,A,Drama", "b,B,Drama"]
    paths = csv_pair(tmp_path, ["user,item", "u,b", "u,a"], items)
    interactions, _ = read_csv_pair(*paths)
    assert interactions.timestamps.tolist() == [0.0, 1.0]  # file order is time order
    assert np.isnan(interactions.ratings).all()
    paths = csv_pair(tmp_path, ["user,item,date", "u,a,1970-01-02", "u,b,", "u,a,1970-01-01T00:01"],
                     items)
    interactions, _ = read_csv_pair(*paths)
    assert interactions.timestamps[0] == 86400 and interactions.timestamps[2] == 60
    assert np.isnan(interactions.timestamps[1])
    paths = csv_pair(tmp_path, ["user,item,date", "u,a,1970-01-02", "u,b,soon"], items)
    with pytest.raises(ValueError, match=r"interactions\.csv, line 3\b"):
        read_csv_pair(*paths)


def test_csv_pair_errors(tmp_path: Path) -> None:
    items = ["item,title,genre", "a,A,Drama"]
    paths = csv_pair(tmp_path, ["person,item", "u,a"], items)
    with pytest.raises(ValueError, match=r"interactions\.csv, line 1\b.*user"):
        read_csv_pair(*paths)
    paths = csv_pair(tmp_path, ["user,item", "u,a", "u,a,extra"], items)
    with pytest.raises(ValueError, match=r"interactions\.csv, line 3\b"):
        read_csv_pair(*paths)
    paths = csv_pair(tmp_path, ["user,item,rating", "u,a,5", "u,a,great"], items)
    with pytest.raises(ValueError, match=r"interactions\.csv, line 3\b.*rating"):
        read_csv_pair(*paths)
    paths = csv_pair(tmp_path, ["user,item", "u,a"], ["item,title", "a,A"])
    with pytest.raises(ValueError, match=r"items\.csv, line 1\b.*attribute"):
        read_csv_pair(*paths)
    paths = csv_pair(tmp_path, ["user,item", "u,a"], [*items, "a,Again,Drama"])
    with pytest.raises(ValueError, match=r"items\.csv, line 3\b.*duplicate"):
        read_csv_pair(*paths)
    paths = csv_pair(tmp_path, ["user,item", ",a"], items)
    with pytest.raises(ValueError, match=r"line 2\b.*user id is missing"):
        read_csv_pair(*paths)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.csv"):
        read_csv_pair(tmp_path / "nowhere.csv", paths[1])


def test_csv_pair_other_attribute_and_no_title(tmp_path: Path) -> None:
    paths = csv_pair(tmp_path, ["user,item", "u,a"], ["item,brand", "a,Acme;Zeta"])
    _, metadata = read_csv_pair(*paths, attributes=["brand"], separator=";")
    assert metadata.titles == ["a"]
    assert metadata.attributes == {"brand": [("Acme", "Zeta")]}
    _, metadata = read_csv_pair(*paths, attributes=[])
    assert metadata.attributes == {}


def test_csv_pair_many_families_and_decades_from_years(tmp_path: Path) -> None:
    paths = csv_pair(tmp_path, ["user,item", "u,a"],
                     ["item,genres,Language,release_year", "a,Drama|War,en|fr,1957",
                      "b,Comedy,,", "c,,de,2001.0"])
    _, metadata = read_csv_pair(*paths, attributes=["genre", "language", "decade"])
    assert metadata.attributes == {
        "genre": [("Drama", "War"), ("Comedy",), ()],
        "language": [("en", "fr"), (), ("de",)],
        "decade": [("1950s",), (), ("2000s",)]}
    with pytest.raises(ValueError, match=r"line 1\b.*'brand'"):
        read_csv_pair(*paths, attributes=["genre", "brand"])
    with pytest.raises(ValueError, match="twice"):
        read_csv_pair(*paths, attributes=["genre", "genre"])
    with pytest.raises(TypeError, match="sequence"):
        read_csv_pair(*paths, attributes="genre")  # type: ignore[arg-type]
    bad = csv_pair(tmp_path, ["user,item", "u,a"], ["item,year", "a,1957", "b,late 50s"])
    with pytest.raises(ValueError, match=r"line 3\b.*whole number"):
        read_csv_pair(*bad, attributes=["decade"])
    decade_column = csv_pair(tmp_path, ["user,item", "u,a"], ["item,decade,year", "a,1950s,1990"])
    _, metadata = read_csv_pair(*decade_column, attributes=["decade"])
    assert metadata.attributes == {"decade": [("1950s",)]}  # an explicit column wins


# --- load_dataset --------------------------------------------------------------------------

def dense_ratings(users: int, items: int, rating_of: dict[int, int] | None = None) -> list[str]:
    """Every user rates every item (rating 5 unless `rating_of[item]`), one second apart."""
    lines = []
    for u in range(1, users + 1):
        for i in range(1, items + 1):
            rating = (rating_of or {}).get(i, 5)
            lines.append(f"{u}::{i}::{rating}::{1000 * u + i}")
    return lines


def test_load_movielens_1m_defaults_to_min_rating_4(tmp_path: Path) -> None:
    movies = [f"{i}::Movie {i} (1990)::Drama" for i in range(1, 8)]
    ml1m(tmp_path, ratings=dense_ratings(6, 7, {7: 3}), movies=movies)
    dataset = load_dataset(tmp_path, "movielens-1m")
    assert dataset.report["min_rating"] == 4.0
    assert dataset.report["dropped_below_min_rating"] == 6
    assert dataset.num_items == 6 and len(dataset.users) == 6
    assert dataset.name == "movielens-1m"
    everything = load_dataset(tmp_path, "movielens-1m", min_rating=0)
    assert everything.num_items == 7


def test_load_movielens_100k_and_csv(tmp_path: Path) -> None:
    root = tmp_path / "ml100k"
    items = [u_item_line(i, f"Movie {i} (1990)", ["Drama"]) for i in range(1, 7)]
    data = [f"{u}\t{i}\t{1 + (u + i) % 5}\t{u * 100 + i}" for u in range(1, 7)
            for i in range(1, 7)]
    ml100k(root, data=data, items=items)
    dataset = load_dataset(root, "movielens-100k")
    assert dataset.num_interactions == 36 and "min_rating" not in dataset.report

    csv_root = tmp_path / "mycsv"
    csv_pair(csv_root, ["user,item,timestamp"] + [f"u{u},i{i},{i}" for u in range(5)
                                                   for i in range(5)],
             ["item,title,genre"] + [f"i{i},Item {i},Drama" for i in range(5)])
    dataset = load_dataset(csv_root, "csv")
    assert dataset.name == "mycsv" and dataset.num_items == 5 and len(dataset.users) == 5
    assert dataset.items.ids == ["i0", "i1", "i2", "i3", "i4"]


def test_load_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="movielens-1m, movielens-100k, csv, s3rec, synthetic"):
        load_dataset(tmp_path, "parquet")
    with pytest.raises(FileNotFoundError, match="missing"):
        load_dataset(tmp_path / "missing", "movielens-1m")
    assert FORMATS == ("movielens-1m", "movielens-100k", "csv", "s3rec", "synthetic")
    with pytest.raises(FileNotFoundError, match=r"Beauty\.txt"):
        load_dataset(tmp_path / "Beauty.txt", "s3rec")


def test_load_synthetic() -> None:
    dataset = load_dataset(None, "synthetic")
    assert dataset.name == "synthetic" and dataset.num_items > 400


def test_load_dataset_csv_attribute_families(tmp_path: Path) -> None:
    events = ["user,item,timestamp"] + [f"u{u},{i},{u * 10 + n}" for u in range(3)
                                        for n, i in enumerate("abc")]
    csv_pair(tmp_path, events, ["item,genre,year", "a,Drama,1957", "b,Comedy,", "c,War,1999"])
    dataset = load_dataset(tmp_path, "csv", k_core=1, attributes=["genre", "decade"])
    assert dataset.items.attributes["decade"] == [("1950s",), (), ("1990s",)]
    assert dataset.report["items_without_decade"] == 1
    assert set(load_dataset(tmp_path, "csv", k_core=1).items.attributes) == {"genre"}
    with pytest.raises(ValueError, match="csv format only"):
        load_dataset(None, "synthetic", attributes=["genre"])


# --- S3-Rec --------------------------------------------------------------------------------

def test_s3rec_sequences_and_brand_category_families(tmp_path: Path) -> None:
    sequences = write(tmp_path / "Toys.txt", ["1 10 11 12 13 14", "2 11 10 14 13 12"])
    # 7 and 8 are only ever listed first (brands); 3 is listed first once, later elsewhere.
    write(tmp_path / "Toys_item2attributes.json",
          ['{"10": [7, 1, 2], "11": [8, 1], "12": [3, 4], "13": [7, 3], "14": []}'])
    interactions, metadata = read_s3rec(sequences)
    assert interactions.users.tolist() == [1] * 5 + [2] * 5
    assert interactions.items.tolist() == [10, 11, 12, 13, 14, 11, 10, 14, 13, 12]
    assert np.isnan(interactions.ratings).all()
    assert metadata.ids == [10, 11, 12, 13, 14]
    assert metadata.attributes["brand"] == [("brand 7",), ("brand 8",), (), ("brand 7",), ()]
    assert metadata.attributes["category"] == [("category 1", "category 2"), ("category 1",),
                                               ("category 3", "category 4"), ("category 3",), ()]
    dataset = load_dataset(sequences, "s3rec", k_core=1)
    assert dataset.name == "Toys"
    # File order is time order: user 2's sequence keeps its order.
    assert [dataset.items.external_id(int(i)) for i in dataset.sequences[1]] == [11, 10, 14, 13, 12]
    assert dataset.report["items_without_brand"] == 2


def test_s3rec_bad_files(tmp_path: Path) -> None:
    write(tmp_path / "A.txt", ["1 10 x"])
    write(tmp_path / "A_item2attributes.json", ["{}"])
    with pytest.raises(ValueError, match=r"A\.txt, line 1\b.*integers"):
        read_s3rec(tmp_path / "A.txt")
    write(tmp_path / "B.txt", ["1 10"])
    with pytest.raises(FileNotFoundError, match="B_item2attributes"):
        read_s3rec(tmp_path / "B.txt")
    write(tmp_path / "B_item2attributes.json", ['{"10": "seven"}'])
    with pytest.raises(ValueError, match="attribute ids"):
        read_s3rec(tmp_path / "B.txt")
    write(tmp_path / "C.txt", ["1"])
    write(tmp_path / "C_item2attributes.json", ["{}"])
    with pytest.raises(ValueError, match="no items"):
        read_s3rec(tmp_path / "C.txt")
